//! Spin's Redis trigger: `[[trigger.redis]]` subscribes to a pub/sub `channel` and calls the
//! component's `handle-message` (`spin:redis/inbound-redis@3.0.0`, or the unversioned
//! `fermyon:spin/inbound-redis` of spin-sdk 2 to 5) once per message, each on a fresh instance.
//!
//! Pub/sub is at-most-once, as in Spin: a message published while moa is not subscribed (down,
//! reconnecting) is never seen, and a failed call (error, trap, deadline) is logged and counted
//! (`moa_events_total{outcome="dropped"}`), never retried. `[[trigger.redis-stream]]` is the
//! at-least-once alternative.

pub mod config;

use super::{RunningTrigger, Trigger, TriggerContext};
use crate::app::{App, AppComponent};
use crate::engine::MoaEngine;
use crate::invocation::Invocation;
use crate::state::HostState;
use crate::telemetry::Metrics;
use anyhow::Result;
use config::RedisTrigger;
use futures::StreamExt as _;
use moa_manifest::{LoadedManifest, ManifestError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/redis-trigger",
        exports: { default: async | store },
    });
}

/// Spin 1 and 2's export (spin-sdk 2 to 5), from the WIT root of the unversioned package.
mod bindings_v1 {
    wasmtime::component::bindgen!({
        path: "../../wit/legacy",
        world: "moa:legacy/redis-trigger-v1",
        exports: { default: async | store },
    });
}

use bindings::RedisTriggerPre;
use bindings::spin::redis::redis::Error as RedisError;
use bindings_v1::RedisTriggerV1Pre;

/// Messages of one subscription handled at once; past it the subscriber waits (and Redis buffers).
const CONCURRENT_MESSAGES: usize = 64;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// `[[trigger.redis]]`: pub/sub messages into `handle-message`.
pub struct RedisTriggers;

/// The entries with the pre-instantiated export of each component they call.
pub struct PreparedRedis {
    triggers: Vec<RedisTrigger>,
    handlers: BTreeMap<String, Handler>,
}

#[derive(Clone)]
struct Handler {
    component: Arc<AppComponent>,
    export: HandlerExport,
}

/// Which `inbound-redis` the component exports.
#[derive(Clone)]
enum HandlerExport {
    V3(Arc<RedisTriggerPre<HostState>>),
    V1(Arc<RedisTriggerV1Pre<HostState>>),
}

impl Trigger for RedisTriggers {
    const KINDS: &'static [&'static str] = &["redis"];
    type Config = Vec<RedisTrigger>;
    type Prepared = PreparedRedis;

    fn configure(app: &LoadedManifest) -> Result<Vec<RedisTrigger>, ManifestError> {
        config::from_manifest(app)
    }

    fn prepare(triggers: Vec<RedisTrigger>, app: &App) -> Result<PreparedRedis> {
        let mut handlers = BTreeMap::new();
        for trigger in &triggers {
            let component = app.component(&trigger.component)?;
            if handlers.contains_key(&component.id) {
                continue;
            }
            let export = match RedisTriggerPre::new(component.pre.clone()) {
                Ok(pre) => HandlerExport::V3(Arc::new(pre)),
                Err(_) => RedisTriggerV1Pre::new(component.pre.clone())
                    .map(|pre| HandlerExport::V1(Arc::new(pre)))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "component `{}` ({}) is named by a [[trigger.redis]] but does not export handle-message (spin:redis/inbound-redis@3.0.0, or fermyon:spin/inbound-redis of spin-sdk 5 and older)\n  help: build it with spin-sdk 7's #[redis_subscriber]",
                            component.id,
                            component.source.display()
                        )
                    })?,
            };
            handlers.insert(
                component.id.clone(),
                Handler {
                    component: component.clone(),
                    export,
                },
            );
        }
        Ok(PreparedRedis { triggers, handlers })
    }

    fn export_of(prepared: &PreparedRedis, id: &str) -> Option<&'static str> {
        prepared
            .handlers
            .get(id)
            .map(|handler| match handler.export {
                HandlerExport::V3(_) => "spin:redis/inbound-redis",
                HandlerExport::V1(_) => "fermyon:spin/inbound-redis",
            })
    }

    async fn start(
        prepared: PreparedRedis,
        _app: &Arc<App>,
        cx: &TriggerContext,
    ) -> Result<Option<Box<dyn RunningTrigger>>> {
        if prepared.triggers.is_empty() {
            return Ok(None);
        }
        // One subscriber (one pub/sub connection) per server, for all its channels.
        let mut by_address: BTreeMap<String, BTreeMap<String, Vec<Handler>>> = BTreeMap::new();
        for trigger in &prepared.triggers {
            let Some(handler) = prepared.handlers.get(&trigger.component) else {
                continue;
            };
            by_address
                .entry(trigger.address.clone())
                .or_default()
                .entry(trigger.channel.clone())
                .or_default()
                .push(handler.clone());
        }
        let mut subscribers = Vec::new();
        for (address, channels) in by_address {
            let client = redis::Client::open(address.as_str()).map_err(|err| {
                anyhow::anyhow!(
                    "[[trigger.redis]] address {}: {err}",
                    crate::redis_client::redact(&address)
                )
            })?;
            // Connect once now so that a wrong address stops `moa up` with the reason.
            let pubsub = tokio::time::timeout(Duration::from_secs(5), client.get_async_pubsub())
                .await
                .map_err(|_| anyhow::anyhow!("timed out"))
                .and_then(|connected| connected.map_err(anyhow::Error::from))
                .map_err(|err| {
                    anyhow::anyhow!(
                        "[[trigger.redis]] cannot connect to Redis at {}: {err:#}\n  help: is it running and reachable? The address comes from [application.trigger.redis] or the entry's `address`",
                        crate::redis_client::redact(&address)
                    )
                })?;
            subscribers.push(Subscriber {
                address,
                client,
                first: Some(pubsub),
                channels: Arc::new(channels),
                engine: cx.engine.clone(),
                metrics: cx.metrics.clone(),
                permits: Arc::new(Semaphore::new(CONCURRENT_MESSAGES)),
            });
        }
        Ok(Some(Box::new(RunningRedis {
            triggers: prepared.triggers,
            subscribers,
            drain: cx.drain,
        })))
    }
}

struct RunningRedis {
    triggers: Vec<RedisTrigger>,
    subscribers: Vec<Subscriber>,
    drain: Duration,
}

#[async_trait::async_trait]
impl RunningTrigger for RunningRedis {
    fn banner(&self) -> Vec<String> {
        let mut lines = vec!["Redis triggers (pub/sub, at most once):".to_string()];
        lines.extend(self.triggers.iter().map(|t| {
            format!(
                "  {} on channel {} at {}",
                t.component,
                t.channel,
                crate::redis_client::redact(&t.address)
            )
        }));
        lines
    }

    async fn run(self: Box<Self>, shutdown: CancellationToken) -> Result<()> {
        let mut calls = JoinSet::new();
        let mut subscribers = JoinSet::new();
        let (call_tx, mut call_rx) = tokio::sync::mpsc::unbounded_channel();
        for subscriber in self.subscribers {
            subscribers.spawn(subscriber.run(shutdown.clone(), call_tx.clone()));
        }
        drop(call_tx);
        // Calls run as tasks of this trigger, so the shutdown can wait for them.
        loop {
            tokio::select! {
                call = call_rx.recv() => match call {
                    Some(call) => { calls.spawn(call); }
                    None => break,
                },
                Some(_) = calls.join_next(), if !calls.is_empty() => {}
            }
        }
        while subscribers.join_next().await.is_some() {}
        let drained = tokio::time::timeout(self.drain, async {
            while calls.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("Redis trigger calls still going after the drain timeout were stopped");
            calls.abort_all();
        }
        Ok(())
    }
}

type Call = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// One pub/sub connection and the channels it serves.
struct Subscriber {
    address: String,
    client: redis::Client,
    first: Option<redis::aio::PubSub>,
    channels: Arc<BTreeMap<String, Vec<Handler>>>,
    engine: Arc<MoaEngine>,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
}

impl Subscriber {
    /// Subscribes, hands every message to its handlers, and reconnects when the connection drops.
    async fn run(
        mut self,
        shutdown: CancellationToken,
        calls: tokio::sync::mpsc::UnboundedSender<Call>,
    ) {
        let shown = crate::redis_client::redact(&self.address);
        let mut backoff = Duration::from_millis(100);
        loop {
            let pubsub = match self.first.take() {
                Some(pubsub) => Ok(pubsub),
                None => self.client.get_async_pubsub().await,
            };
            let mut pubsub = match pubsub {
                Ok(pubsub) => pubsub,
                Err(err) => {
                    tracing::warn!(address = %shown, error = %err, "Redis trigger cannot reconnect; messages published meanwhile are not delivered");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let channels: Vec<&String> = self.channels.keys().collect();
            if let Err(err) = pubsub.subscribe(&channels).await {
                tracing::warn!(address = %shown, error = %err, "Redis trigger cannot subscribe");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            backoff = Duration::from_millis(100);
            tracing::info!(address = %shown, channels = ?channels, "Redis trigger subscribed");
            let mut messages = pubsub.on_message();
            loop {
                let message = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    message = messages.next() => message,
                };
                let Some(message) = message else { break };
                let channel = message.get_channel_name().to_string();
                let payload = message.get_payload_bytes().to_vec();
                let Some(handlers) = self.channels.get(&channel) else {
                    continue;
                };
                for handler in handlers {
                    // Waits while CONCURRENT_MESSAGES calls run: Redis buffers what comes meanwhile.
                    let Ok(permit) = self.permits.clone().acquire_owned().await else {
                        return;
                    };
                    let call = MessageCall {
                        handler: handler.clone(),
                        channel: channel.clone(),
                        payload: payload.clone(),
                        engine: self.engine.clone(),
                        metrics: self.metrics.clone(),
                    };
                    let task: Call = Box::pin(async move {
                        call.run().await;
                        drop(permit);
                    });
                    if calls.send(task).is_err() {
                        return;
                    }
                }
            }
            tracing::warn!(address = %shown, "Redis trigger lost its connection; reconnecting (messages published meanwhile are not delivered)");
        }
    }
}

/// One message for one component.
struct MessageCall {
    handler: Handler,
    channel: String,
    payload: Vec<u8>,
    engine: Arc<MoaEngine>,
    metrics: Arc<Metrics>,
}

impl MessageCall {
    async fn run(self) {
        let started = Instant::now();
        let component = &self.handler.component;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let outcome = self.call(&id).await;
        let label = match &outcome {
            Ok(()) => "ok",
            Err(why) => {
                tracing::error!(
                    component = component.id,
                    request_id = id,
                    channel = self.channel,
                    error = why,
                    "Redis message not handled; pub/sub does not redeliver it"
                );
                "dropped"
            }
        };
        self.metrics
            .event_attempt(&component.id, &self.channel, label, started.elapsed());
    }

    async fn call(&self, id: &str) -> Result<(), String> {
        let component = &self.handler.component;
        let timeout = component.request_timeout;
        let trapped = |trap: wasmtime::Error| {
            if matches!(
                trap.downcast_ref::<wasmtime::Trap>(),
                Some(wasmtime::Trap::Interrupt)
            ) {
                self.metrics.deadline_hit(&component.id);
                format!("deadline of {} ms exceeded", timeout.as_millis())
            } else {
                self.metrics.trapped(&component.id);
                format!("component trapped: {trap:#}")
            }
        };
        let mut store = component
            .new_store(&self.engine, Invocation::new(id, timeout))
            .map_err(|e| format!("cannot create an instance: {e:#}"))?;
        let started = Instant::now();
        let payload = self.payload.clone();
        let deadline = |trap: Option<wasmtime::Error>| match trap {
            None => {
                self.metrics.deadline_hit(&component.id);
                format!("deadline of {} ms exceeded", timeout.as_millis())
            }
            Some(trap) => trapped(trap),
        };
        match &self.handler.export {
            HandlerExport::V3(pre) => {
                let guest = pre.instantiate_async(&mut store).await.map_err(trapped)?;
                self.metrics.instantiated(&component.id, started.elapsed());
                let call = store.run_concurrent(async move |accessor| {
                    guest
                        .spin_redis_inbound_redis()
                        .call_handle_message(accessor, payload)
                        .await
                });
                match tokio::time::timeout(timeout, call).await {
                    Err(_) => Err(deadline(None)),
                    Ok(Err(trap)) | Ok(Ok(Err(trap))) => Err(deadline(Some(trap))),
                    Ok(Ok(Ok(Err(error)))) => Err(match error {
                        RedisError::Other(message) => message,
                        other => format!("{other:?}"),
                    }),
                    Ok(Ok(Ok(Ok(())))) => Ok(()),
                }
            }
            HandlerExport::V1(pre) => {
                let guest = pre.instantiate_async(&mut store).await.map_err(trapped)?;
                self.metrics.instantiated(&component.id, started.elapsed());
                let call = store.run_concurrent(async move |accessor| {
                    guest
                        .fermyon_spin_inbound_redis()
                        .call_handle_message(accessor, payload)
                        .await
                });
                match tokio::time::timeout(timeout, call).await {
                    Err(_) => Err(deadline(None)),
                    Ok(Err(trap)) | Ok(Ok(Err(trap))) => Err(deadline(Some(trap))),
                    // Spin 1's error enum carries no text: `error` is all there is.
                    Ok(Ok(Ok(Err(error)))) => Err(format!("the component returned {error:?}")),
                    Ok(Ok(Ok(Ok(())))) => Ok(()),
                }
            }
        }
    }
}
