//! Event triggers: `[[trigger.kafka]]` and `[[trigger.redis-stream]]` deliver messages at least once
//! to a component's `moa:messaging/handler`, from Kafka, Redis Streams or the embedded event log.
//!
//! Every source shares [`TriggerRuntime::deliver`]: a fresh instance per attempt, retries with
//! doubling backoff, then the dead-letter topic with the error in headers. A source commits a
//! message (Kafka offset, XACK, log offset) only after `deliver` says it was handled or dead-lettered.

mod attempts;
pub mod config;
mod embedded;
mod kafka;
mod keyed;
mod redis_streams;

use super::retry::{DeadLetterFacts, RetryPolicy, slot_waits, transient_waits};
use super::{RunningTrigger, Trigger, TriggerContext};
use crate::app::{App, AppComponent};
use crate::capabilities::messaging::{ConsumerSource, MessagingBrokers, OutgoingMessage};
use crate::engine::MoaEngine;
use crate::invocation::Invocation;
use crate::telemetry::{Health, Metrics};
use anyhow::{Result, bail};
use config::{EventTrigger, EventTriggerKind};
use moa_manifest::{LoadedManifest, ManifestError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/event-handler",
        exports: { default: async },
    });
}

/// The batch export (`batch = N`): the same message types as the single one.
mod batch_bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/batch-event-handler",
        exports: { default: async },
        with: { "moa:messaging/types": super::bindings::moa::messaging::types },
    });
}

use crate::state::HostState;
use batch_bindings::exports::moa::messaging::batch_handler::Delivery as WitBatchDelivery;
use batch_bindings::{BatchEventHandler, BatchEventHandlerPre};
use bindings::EventHandler;
pub use bindings::EventHandlerPre;
use bindings::exports::moa::messaging::handler::Delivery as WitDelivery;
use bindings::moa::messaging::types::{Header as WitHeader, Message as WitMessage};
use wasmtime::Store;

/// `[[trigger.kafka]]` and `[[trigger.redis-stream]]`: messages delivered at least once to
/// `moa:messaging/handler`, from Kafka, Redis Streams or the embedded log.
pub struct EventTriggers;

/// The event triggers with their consumer sources and the components' handlers.
pub struct PreparedEvents {
    triggers: Vec<(EventTrigger, ConsumerSource)>,
    /// Per component and call shape (`true`: batches).
    handlers: BTreeMap<(String, bool), HandlerPre>,
}

/// A component's event export, ready to instantiate: one delivery per call, or batches.
#[derive(Clone)]
enum HandlerPre {
    Single(Arc<EventHandlerPre<HostState>>),
    Batch(Arc<BatchEventHandlerPre<HostState>>),
}

/// An instantiated event export.
enum Handler {
    Single(EventHandler),
    Batch(BatchEventHandler),
}

impl Trigger for EventTriggers {
    const KINDS: &'static [&'static str] = &["kafka", "redis-stream"];
    type Config = Vec<EventTrigger>;
    type Prepared = PreparedEvents;

    fn configure(app: &LoadedManifest) -> Result<Vec<EventTrigger>, ManifestError> {
        config::from_manifest(app)
    }

    fn prepare(triggers: Vec<EventTrigger>, app: &App) -> Result<PreparedEvents> {
        let mut handlers = BTreeMap::new();
        let mut sources = Vec::new();
        for trigger in triggers {
            let source = source_for(app, &app.capabilities.messaging, &trigger)?;
            let component = app.component(&trigger.component)?;
            let batched = trigger.batch > 1;
            if let std::collections::btree_map::Entry::Vacant(slot) =
                handlers.entry((component.id.clone(), batched))
            {
                let pre = if batched {
                    BatchEventHandlerPre::new(component.pre.clone())
                        .map(|pre| HandlerPre::Batch(Arc::new(pre)))
                        .map_err(|_| {
                            anyhow::anyhow!(
                                "component `{}` ({}) is named by an event trigger with `batch = {}` but does not export moa:messaging/batch-handler@0.1.0\n  help: export the batch handler (moa_sdk's `Store::transaction_per_batch` runs a batch in one transaction), or remove `batch` to call moa:messaging/handler once per delivery",
                                component.id,
                                component.source.display(),
                                trigger.batch
                            )
                        })?
                } else {
                    EventHandlerPre::new(component.pre.clone())
                        .map(|pre| HandlerPre::Single(Arc::new(pre)))
                        .map_err(|_| {
                            anyhow::anyhow!(
                                "component `{}` ({}) is named by an event trigger but does not export moa:messaging/handler@0.1.0\n  help: export the handler (wit-bindgen world moa:host/event-component, see wit/moa-host.wit); a component that exports only moa:messaging/batch-handler needs `batch = N` on the trigger",
                                component.id,
                                component.source.display()
                            )
                        })?
                };
                slot.insert(pre);
            }
            sources.push((trigger, source));
        }
        Ok(PreparedEvents {
            triggers: sources,
            handlers,
        })
    }

    fn export_of(prepared: &PreparedEvents, id: &str) -> Option<&'static str> {
        if prepared.handlers.contains_key(&(id.to_string(), false)) {
            Some("moa:messaging/handler")
        } else if prepared.handlers.contains_key(&(id.to_string(), true)) {
            Some("moa:messaging/batch-handler")
        } else {
            None
        }
    }

    async fn start(
        prepared: PreparedEvents,
        app: &Arc<App>,
        cx: &TriggerContext,
    ) -> Result<Option<Box<dyn RunningTrigger>>> {
        if prepared.triggers.is_empty() {
            return Ok(None);
        }
        let consumers = EventConsumers::start(app, prepared, cx)?;
        Ok(Some(Box::new(RunningEvents {
            consumers,
            drain: cx.drain,
        })))
    }
}

struct RunningEvents {
    consumers: EventConsumers,
    drain: Duration,
}

#[async_trait::async_trait]
impl RunningTrigger for RunningEvents {
    fn banner(&self) -> Vec<String> {
        let mut lines = vec!["Event triggers:".to_string()];
        lines.extend(self.consumers.descriptions.iter().map(|d| format!("  {d}")));
        lines
    }

    async fn run(self: Box<Self>, shutdown: CancellationToken) -> Result<()> {
        shutdown.cancelled().await;
        self.consumers.shutdown(self.drain).await;
        Ok(())
    }
}

/// Why one attempt did not handle the event.
enum AttemptError {
    /// The component failed (error, trap, deadline): counts as an attempt.
    Failed(String),
    /// No instance slot was free: the component never ran, so it is not an attempt.
    NoInstanceSlot,
    /// The component failed after a capability told it of a transient condition (a write
    /// conflict, a store briefly unavailable): retried without spending an attempt, for a while.
    Transient(String),
    /// The batch the delivery was in failed as a whole (a trap, the deadline, a wrong answer):
    /// it runs again on its own without spending an attempt.
    Batch(String),
}

/// How long a delivery may keep failing on transient conditions before those failures count as
/// attempts again. Longer than MongoDB's `transactionLifetimeLimitSeconds` (60 s), after which a
/// transaction a killed host left open is aborted and stops conflicting.
const TRANSIENT_WINDOW: Duration = Duration::from_secs(180);

/// A message taken from a broker, to be delivered to a component.
#[derive(Debug, Clone)]
pub struct Event {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    /// The broker's id: `<topic>/<partition>/<offset>@<append time in ms>` or the stream entry id.
    pub id: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Event {
    /// Bytes the event holds (payload, key, headers), for buffer bounds.
    pub fn size(&self) -> usize {
        self.payload.len()
            + self.key.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// How a delivery ended when it ended on its own (not cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Handled,
    DeadLettered,
}

/// One trigger's component, policy and brokers, shared by its consumer tasks.
pub struct TriggerRuntime {
    pub trigger: EventTrigger,
    /// How the trigger is named in logs, metrics and `/readyz`: `<kind>:<topics>:<group>`.
    name: String,
    policy: RetryPolicy,
    component: Arc<AppComponent>,
    handler: HandlerPre,
    /// Where first attempts wait to be taken into a batch (`batch` > 1).
    batcher: Option<mpsc::UnboundedSender<Waiting>>,
    engine: Arc<MoaEngine>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    brokers: Arc<MessagingBrokers>,
}

/// An instance kept by one consumer lane for its next delivery, when `max_instance_reuse` > 1.
pub struct WarmInstance {
    store: Store<HostState>,
    handler: Handler,
    uses: usize,
}

/// Whether capabilities answered a call with transient failures: the last answer, any answer.
#[derive(Debug, Default, Clone, Copy)]
struct Transient {
    last: bool,
    any: bool,
}

/// A first attempt waiting for the next batch, and where its answer goes.
struct Waiting {
    event: Event,
    attempt: u32,
    answer: oneshot::Sender<Result<(), AttemptError>>,
}

/// What one consumer lane (a partition worker, a Redis lane) keeps between deliveries.
#[derive(Default)]
pub struct Lane {
    warm: Option<WarmInstance>,
}

impl TriggerRuntime {
    /// The trigger cannot consume (connection, group or topic error): `/readyz` fails until
    /// [`Self::working`] is called.
    fn failed(&self, why: &str) {
        self.health.trigger_failed(&self.name, why);
    }

    /// The trigger consumes again.
    fn working(&self) {
        self.health.trigger_recovered(&self.name);
    }

    /// `count` messages were committed (offset stored, acknowledged).
    fn committed(&self, count: u64) {
        self.metrics.events_committed(&self.name, count);
    }

    /// Messages of `topic`'s `partition` not yet committed by the trigger's group.
    fn lag(&self, topic: &str, partition: u32, lag: u64) {
        self.metrics.consumer_lag(
            &self.name,
            topic,
            i32::try_from(partition).unwrap_or(i32::MAX),
            i64::try_from(lag).unwrap_or(i64::MAX),
        );
    }

    /// How many deliveries a source may have in flight: `concurrency` calls of `batch` each.
    pub fn in_flight_limit(&self) -> usize {
        (self.trigger.concurrency.max(1) as usize)
            .saturating_mul(self.trigger.batch.max(1) as usize)
    }

    /// Runs one attempt of one delivery under the component's deadline.
    async fn attempt(
        &self,
        event: &Event,
        attempt: u32,
        lane: &mut Lane,
    ) -> Result<(), AttemptError> {
        let (mut results, transient) = self.call(&[(event, attempt)], lane).await?;
        let transient = transient.last;
        match (results.pop(), results.is_empty()) {
            (Some(Ok(())), true) => Ok(()),
            (Some(Err(error)), true) if transient => Err(AttemptError::Transient(error)),
            (Some(Err(error)), true) => Err(AttemptError::Failed(error)),
            (_, _) => Err(AttemptError::Failed(format!(
                "handle-batch answered {} results for 1 delivery",
                results.len() + 1
            ))),
        }
    }

    /// Runs a batch of first attempts in one call and answers each; when the call fails as a
    /// whole, every delivery is told to run on its own.
    async fn attempt_batch(&self, waiting: Vec<Waiting>, lane: &mut Lane) {
        // A delivery abandoned while it waited (revoked, shutting down) is left out.
        let waiting: Vec<Waiting> = waiting
            .into_iter()
            .filter(|w| !w.answer.is_closed())
            .collect();
        if waiting.is_empty() {
            return;
        }
        let events: Vec<(&Event, u32)> = waiting.iter().map(|w| (&w.event, w.attempt)).collect();
        let answered = self.call(&events, lane).await;
        self.metrics.event_batch(&self.component.id, waiting.len());
        match answered {
            Ok((results, transient)) if results.len() == waiting.len() => {
                for (waiting, result) in waiting.into_iter().zip(results) {
                    // Which delivery a conflict in the call belonged to is unknown: after any
                    // transient answer, a failed delivery runs again alone (no attempt spent),
                    // where its own answers decide.
                    let _ = waiting.answer.send(result.map_err(|error| {
                        if transient.any {
                            AttemptError::Batch(error)
                        } else {
                            AttemptError::Failed(error)
                        }
                    }));
                }
            }
            Ok((results, _)) => {
                let why = format!(
                    "handle-batch answered {} results for {} deliveries",
                    results.len(),
                    waiting.len()
                );
                tracing::error!(component = %self.component.id, "{why}; each delivery runs again on its own");
                for waiting in waiting {
                    let _ = waiting.answer.send(Err(AttemptError::Batch(why.clone())));
                }
            }
            Err(error) => {
                let why = match error {
                    AttemptError::Failed(why)
                    | AttemptError::Transient(why)
                    | AttemptError::Batch(why) => why,
                    AttemptError::NoInstanceSlot => "no free instance slot".to_string(),
                };
                for waiting in waiting {
                    let _ = waiting.answer.send(Err(AttemptError::Batch(why.clone())));
                }
            }
        }
    }

    /// Calls the component once with `events` (one delivery per call unless the trigger batches):
    /// on the lane's warm instance if it has one, else a fresh one. Returns the component's answer
    /// per delivery and whether capabilities reported transient conditions during the call. A
    /// failed call, or any failed delivery, discards the instance.
    async fn call(
        &self,
        events: &[(&Event, u32)],
        lane: &mut Lane,
    ) -> Result<(Vec<Result<(), String>>, Transient), AttemptError> {
        let Some(&(first, first_attempt)) = events.first() else {
            return Ok((Vec::new(), Transient::default()));
        };
        // One consumer span per call, a child of the (first) publisher's span (the broker hop).
        let span = if crate::telemetry::traces_exported() {
            tracing::info_span!(
                "event.handle",
                otel.name = %format!("{} process", first.topic),
                otel.kind = "consumer",
                component = %self.component.id,
                topic = %first.topic,
                message_id = %first.id,
                attempt = first_attempt,
                batch = events.len(),
            )
        } else {
            tracing::Span::none()
        };
        let parent = first
            .header("traceparent")
            .and_then(|v| std::str::from_utf8(v).ok());
        let traceparent = crate::telemetry::continue_trace(&span, parent);
        let invocation = Invocation::new(first.id.as_str(), self.component.request_timeout)
            .with_traceparent(traceparent);
        let (mut store, handler, uses) = match lane.warm.take() {
            Some(mut warm) => {
                warm.store.data_mut().begin(invocation);
                (warm.store, warm.handler, warm.uses)
            }
            None => {
                let started = Instant::now();
                let mut store =
                    self.component
                        .new_store(&self.engine, invocation)
                        .map_err(|e| {
                            AttemptError::Failed(format!("cannot create an instance: {e:#}"))
                        })?;
                let instantiated = match &self.handler {
                    HandlerPre::Single(pre) => {
                        pre.instantiate_async(&mut store).await.map(Handler::Single)
                    }
                    HandlerPre::Batch(pre) => {
                        pre.instantiate_async(&mut store).await.map(Handler::Batch)
                    }
                };
                let handler = match instantiated {
                    Ok(handler) => handler,
                    Err(error) if crate::engine::is_pool_exhausted(&error) => {
                        return Err(AttemptError::NoInstanceSlot);
                    }
                    Err(trap) => return Err(AttemptError::Failed(self.classify_trap(trap))),
                };
                self.metrics
                    .instantiated(&self.component.id, started.elapsed());
                (store, handler, 0)
            }
        };
        let message = |event: &Event| WitMessage {
            topic: event.topic.clone(),
            key: event.key.clone(),
            payload: event.payload.clone(),
            headers: event
                .headers
                .iter()
                .map(|(name, value)| WitHeader {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        };
        let call = async {
            let result = match &handler {
                Handler::Single(single) => {
                    let delivery = WitDelivery {
                        message: message(first),
                        partition: first.partition,
                        offset: first.offset,
                        id: first.id.clone(),
                        attempt: first_attempt,
                    };
                    single
                        .moa_messaging_handler()
                        .call_handle(&mut store, &delivery)
                        .await
                        .map(|result| vec![result])
                }
                Handler::Batch(batch) => {
                    let deliveries: Vec<WitBatchDelivery> = events
                        .iter()
                        .map(|&(event, attempt)| WitBatchDelivery {
                            message: message(event),
                            partition: event.partition,
                            offset: event.offset,
                            id: event.id.clone(),
                            attempt,
                        })
                        .collect();
                    batch
                        .moa_messaging_batch_handler()
                        .call_handle_batch(&mut store, &deliveries)
                        .await
                }
            };
            (store, handler, result)
        };
        let call = tracing::Instrument::instrument(call, span);
        let timeout = self.component.request_timeout;
        match tokio::time::timeout(timeout, call).await {
            Err(_) => {
                self.metrics.deadline_hit(&self.component.id);
                Err(AttemptError::Failed(format!(
                    "deadline of {} ms exceeded",
                    timeout.as_millis()
                )))
            }
            Ok((_, _, Err(trap))) => Err(AttemptError::Failed(self.classify_trap(trap))),
            Ok((store, handler, Ok(results))) => {
                let answers = &store.data().invocation.transient;
                let transient = Transient {
                    last: answers.pending(),
                    any: answers.seen(),
                };
                if results.iter().all(Result::is_ok) && uses + 1 < self.component.max_instance_reuse
                {
                    lane.warm = Some(WarmInstance {
                        store,
                        handler,
                        uses: uses + 1,
                    });
                }
                Ok((results, transient))
            }
        }
    }

    /// Counts a trap (or an epoch interrupt, which is the deadline) and describes it.
    fn classify_trap(&self, trap: wasmtime::Error) -> String {
        if matches!(
            trap.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::Interrupt)
        ) {
            self.metrics.deadline_hit(&self.component.id);
            format!(
                "deadline of {} ms exceeded",
                self.component.request_timeout.as_millis()
            )
        } else {
            self.metrics.trapped(&self.component.id);
            format!("component trapped: {trap:#}")
        }
    }

    /// Delivers `event` until it is handled, or dead-letters it after `max_attempts` failed
    /// attempts (`first_attempt` counts earlier deliveries the broker remembers). `None` means
    /// `abort` fired first: the event is neither handled nor dead-lettered and must not be committed.
    pub async fn deliver(
        &self,
        event: &Event,
        first_attempt: u32,
        lane: &mut Lane,
        abort: &CancellationToken,
    ) -> Option<Outcome> {
        let mut attempt = first_attempt.max(1);
        let component = self.component.id.as_str();
        if attempt > self.policy.max_attempts {
            // Every earlier delivery ended without an outcome (the host stopped or crashed during
            // each): a message that takes hosts down is dead-lettered without running it again.
            let error = format!(
                "delivered {} times without being handled (the host stopped during every delivery)",
                attempt - 1
            );
            self.metrics
                .event_attempt(component, &event.topic, "dead_letter", Duration::ZERO);
            self.dead_letter(event, &error, attempt - 1, abort).await?;
            return Some(Outcome::DeadLettered);
        }
        let mut slot_wait = slot_waits();
        let mut transient_waits = transient_waits();
        let transient_until = Instant::now() + TRANSIENT_WINDOW;
        // The first attempt joins the next batch when the trigger batches; retries run alone.
        let mut batched = self.batcher.as_ref();
        loop {
            let started = Instant::now();
            let result = match batched.take() {
                Some(batcher) => tokio::select! {
                    result = Self::batched_attempt(batcher, event, attempt) => result,
                    _ = abort.cancelled() => return None,
                },
                None => tokio::select! {
                    result = self.attempt(event, attempt, lane) => result,
                    _ = abort.cancelled() => return None,
                },
            };
            let result = match result {
                Err(AttemptError::Batch(why)) => {
                    tracing::debug!(component, topic = %event.topic, id = %event.id, why, "the batch failed as a whole; the delivery runs on its own");
                    continue;
                }
                Err(AttemptError::NoInstanceSlot) => {
                    // A busy host waits for a slot; it never spends the event's attempts on it.
                    self.metrics.event_instance_wait(component);
                    let wait = slot_wait.next().unwrap_or(Duration::from_secs(1));
                    tracing::debug!(component, topic = %event.topic, id = %event.id, wait_ms = wait.as_millis() as u64, "no free instance slot; waiting");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = abort.cancelled() => return None,
                    }
                    continue;
                }
                Err(AttemptError::Transient(error)) if Instant::now() < transient_until => {
                    self.metrics.event_attempt(
                        component,
                        &event.topic,
                        "transient",
                        started.elapsed(),
                    );
                    let wait = transient_waits.next().unwrap_or(Duration::from_secs(2));
                    tracing::warn!(
                        component,
                        topic = %event.topic,
                        id = %event.id,
                        attempt,
                        retry_in_ms = wait.as_millis() as u64,
                        error = %error,
                        "event handler failed on a transient condition (write conflict or store unavailable); retrying without spending an attempt"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = abort.cancelled() => return None,
                    }
                    continue;
                }
                Err(AttemptError::Failed(error) | AttemptError::Transient(error)) => Err(error),
                Ok(()) => Ok(()),
            };
            slot_wait = slot_waits();
            match result {
                Ok(()) => {
                    self.metrics
                        .event_attempt(component, &event.topic, "ok", started.elapsed());
                    tracing::debug!(component, topic = %event.topic, id = %event.id, attempt, "event handled");
                    return Some(Outcome::Handled);
                }
                Err(error) if attempt >= self.policy.max_attempts => {
                    self.metrics.event_attempt(
                        component,
                        &event.topic,
                        "dead_letter",
                        started.elapsed(),
                    );
                    self.dead_letter(event, &error, attempt, abort).await?;
                    return Some(Outcome::DeadLettered);
                }
                Err(error) => {
                    self.metrics
                        .event_attempt(component, &event.topic, "retry", started.elapsed());
                    let backoff = self.policy.backoff_after(attempt);
                    tracing::warn!(
                        component,
                        topic = %event.topic,
                        id = %event.id,
                        attempt,
                        max_attempts = self.policy.max_attempts,
                        retry_in_ms = backoff.as_millis() as u64,
                        error = %error,
                        "event handler failed; retrying"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = abort.cancelled() => return None,
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// Hands a first attempt to the batcher and waits for its answer.
    async fn batched_attempt(
        batcher: &mpsc::UnboundedSender<Waiting>,
        event: &Event,
        attempt: u32,
    ) -> Result<(), AttemptError> {
        let (answer, answered) = oneshot::channel();
        let waiting = Waiting {
            event: event.clone(),
            attempt,
            answer,
        };
        if batcher.send(waiting).is_err() {
            return Err(AttemptError::Batch("the batcher has stopped".into()));
        }
        answered
            .await
            .unwrap_or_else(|_| Err(AttemptError::Batch("the batch was dropped".into())))
    }

    /// Publishes the failed message to the dead-letter topic with why it failed, retrying until
    /// the broker takes it (a message is never dropped); `None` if aborted first.
    async fn dead_letter(
        &self,
        event: &Event,
        error: &str,
        attempts: u32,
        abort: &CancellationToken,
    ) -> Option<()> {
        let topic = self.trigger.dead_letter_for(&event.topic);
        let mut headers = event.headers.clone();
        headers.extend(
            DeadLetterFacts {
                error,
                original_topic: &event.topic,
                original_partition: event.partition,
                original_offset: event.offset,
                original_id: &event.id,
                attempts,
                component: &self.component.id,
                group: &self.trigger.group,
            }
            .headers(),
        );
        let message = OutgoingMessage {
            topic: topic.clone(),
            key: event.key.clone(),
            payload: event.payload.clone(),
            headers,
        };
        let broker = self.brokers.broker_for(&topic).clone();
        loop {
            match broker.publish(message.clone()).await {
                Ok(()) => {
                    tracing::error!(
                        component = %self.component.id,
                        topic = %event.topic,
                        id = %event.id,
                        attempts,
                        dead_letter_topic = %topic,
                        error,
                        "event dead-lettered"
                    );
                    return Some(());
                }
                Err(err) => {
                    tracing::error!(dead_letter_topic = %topic, error = %err, "cannot dead-letter an event; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = abort.cancelled() => return None,
                    }
                }
            }
        }
    }
}

/// Takes the first attempts waiting in `queue` into batches of up to `batch` and runs up to
/// `concurrency` batches at once. A batch is whatever waits when a call can start (no timer):
/// under load the queue fills while the calls run, so batches grow with the load. Ends when the
/// trigger's runtime is gone.
async fn run_batches(
    runtime: std::sync::Weak<TriggerRuntime>,
    mut queue: mpsc::UnboundedReceiver<Waiting>,
    batch: usize,
    concurrency: usize,
) {
    let calls = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let lanes: Arc<std::sync::Mutex<Vec<Lane>>> = Arc::default();
    loop {
        let Ok(call) = calls.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut waiting = vec![first];
        while waiting.len() < batch {
            match queue.try_recv() {
                Ok(next) => waiting.push(next),
                Err(_) => break,
            }
        }
        let Some(runtime) = runtime.upgrade() else {
            return;
        };
        let lanes = lanes.clone();
        tokio::spawn(async move {
            let _call = call;
            let mut lane = lanes
                .lock()
                .ok()
                .and_then(|mut lanes| lanes.pop())
                .unwrap_or_default();
            runtime.attempt_batch(waiting, &mut lane).await;
            if lane.warm.is_some()
                && let Ok(mut lanes) = lanes.lock()
            {
                lanes.push(lane);
            }
        });
    }
}

/// The running event triggers of an app.
pub struct EventConsumers {
    tasks: JoinSet<()>,
    /// Stops taking new messages; in-flight deliveries finish and are committed.
    stop: CancellationToken,
    /// Abandons in-flight deliveries (not committed: they are delivered again later).
    abort: CancellationToken,
    descriptions: Vec<String>,
}

impl EventConsumers {
    /// Starts a consumer for every event trigger. Must run inside the tokio runtime.
    fn start(app: &App, prepared: PreparedEvents, cx: &TriggerContext) -> Result<Self> {
        let brokers = (*app.capabilities.messaging).clone();
        let stop = CancellationToken::new();
        let abort = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut descriptions = Vec::new();
        let (engine, metrics, health) = (&cx.engine, &cx.metrics, &cx.health);
        // Kafka deliveries are counted on the host (Kafka keeps only offsets), in one file.
        let mut kafka_attempts: Option<Arc<attempts::AttemptLog>> = None;
        for (trigger, source) in prepared.triggers {
            let component = app.component(&trigger.component)?.clone();
            let handler = prepared
                .handlers
                .get(&(trigger.component.clone(), trigger.batch > 1))
                .cloned()
                .ok_or_else(|| {
                    anyhow::anyhow!("component `{}` has no handler", trigger.component)
                })?;
            let (batcher, batch_queue) = if trigger.batch > 1 {
                let (sender, queue) = mpsc::unbounded_channel();
                (Some(sender), Some(queue))
            } else {
                (None, None)
            };
            let runtime = Arc::new(TriggerRuntime {
                batcher,
                policy: RetryPolicy::new(
                    trigger.max_attempts,
                    Duration::from_millis(trigger.retry_backoff_ms),
                ),
                handler,
                trigger: trigger.clone(),
                name: format!(
                    "{}:{}:{}",
                    trigger.kind.as_str(),
                    trigger.topics.join(","),
                    trigger.group
                ),
                component,
                engine: engine.clone(),
                metrics: metrics.clone(),
                health: health.clone(),
                brokers: brokers.clone(),
            });
            if let Some(queue) = batch_queue {
                tokio::spawn(run_batches(
                    Arc::downgrade(&runtime),
                    queue,
                    trigger.batch as usize,
                    trigger.concurrency as usize,
                ));
            }
            let (stop, abort) = (stop.clone(), abort.clone());
            let description = format!(
                "{} ({}) -> {}: {} as group `{}`{}",
                trigger.kind.as_str(),
                source_kind(&source),
                trigger.component,
                trigger.topics.join(", "),
                trigger.group,
                if trigger.batch > 1 {
                    format!(", in batches of up to {}", trigger.batch)
                } else {
                    String::new()
                }
            );
            if matches!(source, ConsumerSource::Kafka { .. }) && kafka_attempts.is_none() {
                kafka_attempts = Some(Arc::new(attempts::AttemptLog::open(
                    &cx.state_dir.join("kafka-deliveries.db"),
                )?));
            }
            match source {
                ConsumerSource::Embedded(log) => {
                    tasks.spawn(embedded::run(runtime, log, stop, abort));
                }
                ConsumerSource::Kafka {
                    bootstrap,
                    properties,
                    msk_iam,
                } => {
                    let attempts = kafka_attempts
                        .clone()
                        .ok_or_else(|| anyhow::anyhow!("the Kafka delivery counts are not open"))?;
                    let consumer = kafka::KafkaTrigger::connect(
                        runtime,
                        &bootstrap,
                        &properties,
                        msk_iam,
                        attempts,
                    )?;
                    tasks.spawn(consumer.run(stop, abort));
                }
                ConsumerSource::Redis { url } => {
                    tasks.spawn(redis_streams::run(runtime, url, stop, abort));
                }
            }
            descriptions.push(description);
        }
        Ok(EventConsumers {
            tasks,
            stop,
            abort,
            descriptions,
        })
    }

    /// One line per trigger: kind, backend, component, topics and group.
    pub fn descriptions(&self) -> &[String] {
        &self.descriptions
    }

    /// Stops consuming: in-flight deliveries get `drain` to finish (and are committed), the rest
    /// are abandoned uncommitted, so another consumer or the next start delivers them again.
    pub async fn shutdown(mut self, drain: Duration) {
        self.stop.cancel();
        let all_done = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(drain, all_done).await.is_err() {
            tracing::warn!(
                "event deliveries still running after the drain timeout; abandoning them uncommitted"
            );
            self.abort.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while self.tasks.join_next().await.is_some() {}
            })
            .await;
        }
    }
}

fn source_kind(source: &ConsumerSource) -> &'static str {
    match source {
        ConsumerSource::Kafka { .. } => "kafka",
        ConsumerSource::Redis { .. } => "redis",
        ConsumerSource::Embedded(_) => "embedded log",
    }
}

/// The one broker all of a trigger's topics live on, checked against the trigger's kind.
fn source_for(
    app: &App,
    brokers: &MessagingBrokers,
    trigger: &EventTrigger,
) -> Result<ConsumerSource> {
    let where_ = format!("{}:{}", app.manifest.path.display(), trigger.position);
    let mut chosen: Option<(
        Arc<dyn crate::capabilities::messaging::Broker>,
        ConsumerSource,
    )> = None;
    for topic in &trigger.topics {
        let (broker, source) = brokers.source_for(topic);
        if let Some((first, _)) = &chosen {
            if !Arc::ptr_eq(first, &broker) {
                bail!(
                    "{where_}: the topics of this [[trigger.{}]] live on different brokers ({} and {})\n  help: route them to one broker in [[messaging.routes]], or split the trigger",
                    trigger.kind.as_str(),
                    first.kind(),
                    broker.kind()
                );
            }
        } else {
            chosen = Some((broker, source));
        }
    }
    let Some((_, source)) = chosen else {
        bail!("{where_}: the trigger has no topics");
    };
    match (trigger.kind, &source) {
        (EventTriggerKind::Kafka, ConsumerSource::Redis { .. }) => bail!(
            "{where_}: [[trigger.kafka]] reads {}, which the runtime config routes to a Redis broker\n  help: use [[trigger.redis-stream]] for Redis streams, or route the topic to a kafka broker in [[messaging.routes]]",
            trigger.topics.join(", ")
        ),
        (EventTriggerKind::RedisStream, ConsumerSource::Kafka { .. }) => bail!(
            "{where_}: [[trigger.redis-stream]] reads {}, which the runtime config routes to a Kafka broker\n  help: use [[trigger.kafka]] for Kafka topics, or route the stream to a redis broker in [[messaging.routes]]",
            trigger.topics.join(", ")
        ),
        _ => {}
    }
    Ok(source)
}

/// This host instance's consumer name: `MOA_CONSUMER_NAME`, else the pod name (`POD_NAME`, set
/// from the downward API in the Helm chart), else `<hostname>-<pid>`. Unique per replica, so
/// Redis can tell whose pending entries are whose.
pub fn consumer_name() -> String {
    if let Some(name) = ["MOA_CONSUMER_NAME", "POD_NAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    {
        return name;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "moa".into());
    format!("{host}-{}", std::process::id())
}
