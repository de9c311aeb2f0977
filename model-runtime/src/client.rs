//! The gRPC client the host uses for a remote model runtime: lazily connected HTTP/2 channels
//! (multiplexed, reconnecting), a deadline per call, and retries with backoff for UNAVAILABLE and
//! RESOURCE_EXHAUSTED while the deadline allows.
//!
//! `http://host:port` is one channel. `dns:///host:port` (gRPC's name syntax) is balanced per
//! call: the name is resolved again and again (a Kubernetes headless Service gives every pod's
//! address), each address gets its own channel, and each call goes to the less busy of two
//! addresses picked at random, so pods added by a scale-out take calls at once.

use crate::batcher::RuntimeError;
use crate::embedder::TextKind;
use crate::proto::embedding_client::EmbeddingClient;
use crate::proto::{self, EmbedRequest, InfoRequest, InfoResponse};
use crate::runtime::{EmbedCall, Embedded};
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// The longest pause between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often a `dns:///` name is resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);
/// The scheme of a name that is resolved and balanced per call.
const DNS_SCHEME: &str = "dns:///";

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
    target: Target,
    endpoint: String,
    settings: ClientSettings,
}

#[derive(Clone)]
enum Target {
    One(EmbeddingClient<Channel>),
    Balanced(Arc<Balanced>),
}

/// Resolves a name to the addresses to balance over.
pub type Resolver =
    Arc<dyn Fn() -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

impl RemoteRuntime {
    /// Prepares the channel(s) without connecting: the host starts even while the runtime is
    /// down, and calls then fail (after retries) with [`RuntimeError::Unavailable`]. A
    /// `dns:///host:port` endpoint is balanced per call over every address the name resolves to.
    pub fn connect_lazy(endpoint: &str, settings: ClientSettings) -> anyhow::Result<Self> {
        if let Some(name) = endpoint.strip_prefix(DNS_SCHEME) {
            let name = name.trim_end_matches('/').to_string();
            if !name
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            {
                anyhow::bail!(
                    "invalid model runtime endpoint `{endpoint}`: write dns:///<host>:<port>, e.g. dns:///moa-model-runtime-headless:50051"
                );
            }
            let lookup = name.clone();
            let resolver: Resolver = Arc::new(move || {
                let lookup = lookup.clone();
                Box::pin(async move { Ok(tokio::net::lookup_host(lookup).await?.collect()) })
            });
            return Ok(Self::balanced(endpoint, resolver, RESOLVE_EVERY, settings));
        }
        let channel = lazy_channel(endpoint, settings)?;
        Ok(RemoteRuntime {
            target: Target::One(client_of(channel)),
            endpoint: endpoint.to_string(),
            settings,
        })
    }

    /// Balances calls over the addresses `resolve` gives, asking it again every `every` (and at
    /// once). An address that stays keeps its connection; one that goes is closed. Needs a
    /// Tokio runtime (the resolution runs on it until the last clone is dropped).
    pub fn balanced(
        endpoint: &str,
        resolve: Resolver,
        every: Duration,
        settings: ClientSettings,
    ) -> Self {
        let balanced = Arc::new(Balanced {
            name: endpoint.to_string(),
            backends: RwLock::new(Arc::new(Vec::new())),
            picks: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
            settings,
        });
        tokio::spawn(resolve_forever(Arc::downgrade(&balanced), resolve, every));
        RemoteRuntime {
            target: Target::Balanced(balanced),
            endpoint: endpoint.to_string(),
            settings,
        }
    }

    /// The addresses a balanced endpoint spreads calls over now (empty for a single channel).
    pub fn addresses(&self) -> Vec<SocketAddr> {
        match &self.target {
            Target::One(_) => Vec::new(),
            Target::Balanced(b) => b.snapshot().iter().map(|backend| backend.address).collect(),
        }
    }

    /// The client for one call, and the guard counting it in flight on its address.
    fn pick(&self) -> Result<(EmbeddingClient<Channel>, Option<InFlight>), Status> {
        match &self.target {
            Target::One(client) => Ok((client.clone(), None)),
            Target::Balanced(balanced) => balanced.pick(),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub async fn info(&self) -> Result<InfoResponse, RuntimeError> {
        let mut request = tonic::Request::new(InfoRequest {});
        request.set_timeout(self.settings.request_timeout);
        let (mut client, _in_flight) = self.pick().map_err(|s| error_of(&s))?;
        client
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
            let status = match self.pick() {
                Ok((mut client, _in_flight)) => {
                    match tokio::time::timeout(left, client.embed(request)).await {
                        Ok(Ok(response)) => {
                            return Ok(embedded_of(response.into_inner(), started));
                        }
                        Ok(Err(status)) => status,
                        Err(_) => return Err(RuntimeError::DeadlineExceeded),
                    }
                }
                Err(status) => status,
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

fn lazy_channel(endpoint: &str, settings: ClientSettings) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| anyhow::anyhow!("invalid model runtime endpoint `{endpoint}`: {e}"))?
        .connect_timeout(settings.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

fn client_of(channel: Channel) -> EmbeddingClient<Channel> {
    EmbeddingClient::new(channel).max_decoding_message_size(64 << 20)
}

/// The addresses of a `dns:///` endpoint, each with its own channel.
struct Balanced {
    name: String,
    backends: RwLock<Arc<Vec<Arc<Backend>>>>,
    /// State of the pseudo-random picks.
    picks: AtomicU64,
    settings: ClientSettings,
}

struct Backend {
    address: SocketAddr,
    client: EmbeddingClient<Channel>,
    in_flight: Arc<AtomicUsize>,
}

/// A call in flight on one address; counted down when dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balanced {
    fn snapshot(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends
            .read()
            .map(|b| b.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Power of two choices: the address with fewer calls in flight of two picked at random.
    fn pick(&self) -> Result<(EmbeddingClient<Channel>, Option<InFlight>), Status> {
        let backends = self.snapshot();
        let chosen = match backends.len() {
            0 => {
                return Err(Status::unavailable(format!(
                    "{} resolves to no address (yet)",
                    self.name
                )));
            }
            1 => &backends[0],
            n => {
                let random = self.next_random();
                let first = (random % n as u64) as usize;
                let second = (first + 1 + ((random >> 32) % (n as u64 - 1)) as usize) % n;
                let (a, b) = (&backends[first], &backends[second]);
                if b.in_flight.load(Ordering::Relaxed) < a.in_flight.load(Ordering::Relaxed) {
                    b
                } else {
                    a
                }
            }
        };
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok((
            chosen.client.clone(),
            Some(InFlight(chosen.in_flight.clone())),
        ))
    }

    /// splitmix64 over a shared counter: cheap, lock-free, good enough to spread picks.
    fn next_random(&self) -> u64 {
        let mut z = self
            .picks
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Replaces the address set: addresses that stay keep their channel (and connection).
    fn update(&self, mut addresses: Vec<SocketAddr>) {
        addresses.sort();
        addresses.dedup();
        let current = self.snapshot();
        if current
            .iter()
            .map(|b| b.address)
            .eq(addresses.iter().copied())
        {
            return;
        }
        let mut next = Vec::with_capacity(addresses.len());
        for address in &addresses {
            if let Some(existing) = current.iter().find(|b| b.address == *address) {
                next.push(existing.clone());
                continue;
            }
            match lazy_channel(&format!("http://{address}"), self.settings) {
                Ok(channel) => next.push(Arc::new(Backend {
                    address: *address,
                    client: client_of(channel),
                    in_flight: Arc::new(AtomicUsize::new(0)),
                })),
                Err(err) => {
                    tracing::warn!(endpoint = %self.name, %address, error = %err, "cannot use a resolved address")
                }
            }
        }
        tracing::info!(endpoint = %self.name, addresses = ?addresses, "model runtime addresses changed");
        if let Ok(mut backends) = self.backends.write() {
            *backends = Arc::new(next);
        }
    }
}

/// Resolves the name now and then every `every`, until the runtime client is dropped. A failed
/// resolution keeps the addresses known so far.
async fn resolve_forever(balanced: Weak<Balanced>, resolve: Resolver, every: Duration) {
    let mut failing = false;
    loop {
        let result = resolve().await;
        let Some(balanced) = balanced.upgrade() else {
            return;
        };
        match result {
            Ok(addresses) => {
                failing = false;
                balanced.update(addresses);
            }
            Err(err) if !failing => {
                failing = true;
                tracing::warn!(endpoint = %balanced.name, error = %err, "cannot resolve the model runtime's name; keeping the addresses known so far");
            }
            Err(_) => {}
        }
        drop(balanced);
        tokio::time::sleep(every).await;
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
