//! Messaging capability: `moa:messaging/producer` publishes to topics that the runtime config's
//! `[messaging]` maps to brokers (Kafka, Redis Streams); with none configured, the embedded event log.

mod counted;
mod embedded;
pub mod kafka;
pub mod redis_streams;

use crate::capabilities::{
    Capability, ComponentContext, ConfigureContext, HasCapability, InstanceParts,
};
use crate::invocation::Invocation;
use crate::runtime_config::{RuntimeConfig, ValueSource};
use anyhow::{Context as _, Result, bail};
use async_trait::async_trait;
use bindings::moa::messaging::producer;
use bindings::moa::messaging::types::{Error, Message};
use moa_manifest::LoadedManifest;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{HasData, Linker};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/messaging",
        imports: { default: async | trappable },
    });
}

/// A message on its way to a broker.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Why a broker did not take a message.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("message too large: {0}")]
    TooLarge(String),
    #[error("{0}")]
    Other(String),
}

/// Where an event trigger reads the topics a broker holds.
#[derive(Clone)]
pub enum ConsumerSource {
    Kafka {
        bootstrap: String,
        /// The broker's librdkafka properties (SASL, TLS...), applied to consumers too.
        properties: BTreeMap<String, String>,
        /// Signs SASL/OAUTHBEARER tokens when the broker is MSK with IAM.
        msk_iam: Option<Arc<moa_msk_iam::MskIam>>,
    },
    Redis {
        url: String,
    },
    Embedded(Arc<moa_eventlog::EventLog>),
}

/// A place messages go.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Stores the message durably before returning.
    async fn publish(&self, message: OutgoingMessage) -> Result<(), PublishError>;
    /// Stores several messages, all in flight at once but kept in order (same key, same order).
    async fn publish_batch(&self, messages: Vec<OutgoingMessage>) -> Result<(), PublishError> {
        for message in messages {
            self.publish(message).await?;
        }
        Ok(())
    }
    /// `kafka`, `redis` or `embedded`, for logs and errors.
    fn kind(&self) -> &'static str;
    /// How a consumer connects to the same broker.
    fn consumer_source(&self) -> ConsumerSource;
}

/// `[messaging]` in the runtime config.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagingSection {
    /// Broker for topics no route matches; default: the only broker, else the embedded log.
    default_broker: Option<String>,
    #[serde(default)]
    brokers: BTreeMap<String, BrokerConfig>,
    #[serde(default)]
    routes: Vec<RouteConfig>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteConfig {
    /// Topic names or `prefix*` patterns.
    topics: Vec<String>,
    broker: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum BrokerConfig {
    Kafka {
        /// `host:port,host:port` (MSK bootstrap brokers).
        brokers: ValueSource,
        /// librdkafka properties passed through as they are (SASL, TLS, timeouts).
        #[serde(default)]
        properties: BTreeMap<String, ValueSource>,
        /// Amazon MSK with IAM: SASL/OAUTHBEARER tokens signed with the pod's AWS credentials.
        aws_msk_iam: Option<MskIamConfig>,
    },
    Redis {
        url: ValueSource,
        /// Trim each stream to about this many entries (`XADD MAXLEN ~ n`).
        maxlen: Option<u64>,
    },
    Embedded {
        /// The log file (default: `<state dir>/events.db`).
        path: Option<std::path::PathBuf>,
        /// How long records are kept once every group read them (default 168 hours: a week).
        retention_hours: Option<u64>,
    },
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MskIamConfig {
    /// The cluster's AWS region (the token is signed for `kafka.<region>.amazonaws.com`).
    region: ValueSource,
}

/// `name` matches `pattern`: equal, or `pattern` ends in `*` and `name` starts with the rest.
pub fn topic_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Deletes an embedded log's records past `retention` that every group has read, each minute,
/// until the log is dropped.
fn spawn_log_pruner(log: &Arc<moa_eventlog::EventLog>, retention: Duration) {
    const SLICE: u64 = 10_000;
    let log = Arc::downgrade(log);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let Ok(retention) = i64::try_from(retention.as_millis()) else {
                return;
            };
            let before = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
                - retention;
            loop {
                let Some(log) = log.upgrade() else { return };
                let pruned = tokio::task::spawn_blocking(move || log.prune(before, SLICE)).await;
                match pruned {
                    Ok(Ok(n)) if n > 0 => tracing::debug!(
                        pruned = n,
                        "event log records past their retention deleted"
                    ),
                    Ok(Ok(_)) => break,
                    Ok(Err(error)) => {
                        tracing::warn!(error = %error, "cannot prune the event log");
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
    });
}

/// The app's brokers and which topics go where.
pub struct MessagingBrokers {
    routes: Vec<(String, Arc<dyn Broker>)>,
    default: Arc<dyn Broker>,
    /// The embedded log, when one is configured (event triggers read it).
    pub embedded: Option<Arc<moa_eventlog::EventLog>>,
}

impl MessagingBrokers {
    /// Connects every configured broker (a load error names the table), or opens the embedded log.
    pub async fn configure(
        runtime_config: &RuntimeConfig,
        state_dir: &Path,
        app: &LoadedManifest,
        metrics: &crate::telemetry::Metrics,
    ) -> Result<Arc<Self>> {
        let published = counted::PublishedMetrics::register(metrics);
        let section: MessagingSection = runtime_config.section("messaging")?.unwrap_or_default();
        let describe = runtime_config.describe();
        let mut brokers: BTreeMap<String, Arc<dyn Broker>> = BTreeMap::new();
        let mut embedded_log = None;
        // One log object per file: two brokers naming the same file share it.
        let mut open_logs: BTreeMap<std::path::PathBuf, Arc<moa_eventlog::EventLog>> =
            BTreeMap::new();
        let mut open_embedded =
            |path: &Path, retention_hours: Option<u64>| -> Result<Arc<moa_eventlog::EventLog>> {
                if let Some(log) = open_logs.get(path) {
                    return Ok(log.clone());
                }
                let log = Arc::new(moa_eventlog::EventLog::open(path).with_context(|| {
                    format!("cannot open the embedded event log at {}", path.display())
                })?);
                spawn_log_pruner(
                    &log,
                    Duration::from_secs(retention_hours.unwrap_or(168).saturating_mul(3600)),
                );
                open_logs.insert(path.to_path_buf(), log.clone());
                Ok(log)
            };
        for (name, config) in &section.brokers {
            let broker: Arc<dyn Broker> = match config {
                BrokerConfig::Kafka {
                    brokers,
                    properties,
                    aws_msk_iam,
                } => {
                    let bootstrap =
                        brokers.resolve(&format!("[messaging.brokers.{name}] brokers"))?;
                    let mut resolved = BTreeMap::new();
                    for (key, value) in properties {
                        resolved.insert(
                            key.clone(),
                            value
                                .resolve(&format!("[messaging.brokers.{name}.properties] {key}"))?,
                        );
                    }
                    let msk_iam = match aws_msk_iam {
                        Some(iam) => {
                            let region = iam.region.resolve(&format!(
                                "[messaging.brokers.{name}.aws_msk_iam] region"
                            ))?;
                            kafka::iam_properties(&mut resolved);
                            let signer =
                                moa_msk_iam::MskIam::start(&region).await.with_context(|| {
                                    format!("{describe}: [messaging.brokers.{name}.aws_msk_iam]")
                                })?;
                            tracing::info!(broker = %name, region, access_key = %signer.credentials().access_key_id, "Kafka broker authenticates with MSK IAM");
                            Some(signer)
                        }
                        None => None,
                    };
                    Arc::new(
                        kafka::KafkaBroker::connect(&bootstrap, &resolved, msk_iam)
                            .with_context(|| format!("{describe}: [messaging.brokers.{name}]"))?,
                    )
                }
                BrokerConfig::Redis { url, maxlen } => {
                    let url = url.resolve(&format!("[messaging.brokers.{name}] url"))?;
                    let broker = redis_streams::RedisStreamsBroker::connect(&url, *maxlen)
                        .await
                        .with_context(|| format!("{describe}: [messaging.brokers.{name}]"))?;
                    Arc::new(broker)
                }
                BrokerConfig::Embedded {
                    path,
                    retention_hours,
                } => {
                    let path = match path {
                        Some(p) if p.is_relative() => {
                            runtime_config.base_dir().unwrap_or(Path::new(".")).join(p)
                        }
                        Some(p) => p.clone(),
                        None => state_dir.join("events.db"),
                    };
                    let log = open_embedded(&path, *retention_hours)?;
                    embedded_log = Some(log.clone());
                    Arc::new(embedded::EmbeddedBroker::new(log))
                }
            };
            brokers.insert(
                name.clone(),
                counted::CountedBroker::wrap(broker, name, &published),
            );
        }
        let default = match (&section.default_broker, brokers.len()) {
            (Some(name), _) => brokers.get(name).cloned().with_context(|| {
                format!("{describe}: [messaging] default_broker = \"{name}\" is not under [messaging.brokers]\n  help: add [messaging.brokers.{name}] or fix the name")
            })?,
            (None, 1) => brokers.values().next().cloned().context("one broker")?,
            (None, 0) => {
                let log = open_embedded(&state_dir.join("events.db"), None)?;
                embedded_log = Some(log.clone());
                counted::CountedBroker::wrap(
                    Arc::new(embedded::EmbeddedBroker::new(log)),
                    "embedded",
                    &published,
                )
            }
            (None, _) => bail!(
                "{describe}: [messaging] has several brokers but no default_broker\n  help: set default_broker = \"<name>\" so that unrouted topics have a home"
            ),
        };
        let mut routes = Vec::new();
        for route in &section.routes {
            let broker = brokers.get(&route.broker).cloned().with_context(|| {
                format!("{describe}: a [[messaging.routes]] entry names broker `{}`, which is not under [messaging.brokers]", route.broker)
            })?;
            for topic in &route.topics {
                routes.push((topic.clone(), broker.clone()));
            }
        }
        for component in app.manifest.components.values() {
            for topic in &component.string_list(&app.path, "allowed_publish_topics")? {
                let name = topic.value.trim_end_matches('*');
                if !name.is_empty() && !moa_eventlog::is_valid_topic(name) {
                    bail!(
                        "{}:{}: component `{}` lists invalid topic `{}` in allowed_publish_topics\n  help: topics use letters, digits, `.`, `_` and `-`; a trailing `*` matches a prefix",
                        app.path.display(),
                        topic.position,
                        component.id,
                        topic.value
                    );
                }
            }
        }
        Ok(Arc::new(MessagingBrokers {
            routes,
            default,
            embedded: embedded_log,
        }))
    }

    /// The broker that holds `topic`.
    pub fn broker_for(&self, topic: &str) -> &Arc<dyn Broker> {
        self.routes
            .iter()
            .find(|(pattern, _)| topic_matches(pattern, topic))
            .map_or(&self.default, |(_, broker)| broker)
    }

    /// The broker that holds `topic`, with how to consume from it.
    pub fn source_for(&self, topic: &str) -> (Arc<dyn Broker>, ConsumerSource) {
        let broker = self.broker_for(topic).clone();
        let source = broker.consumer_source();
        (broker, source)
    }

    /// One component's grant: the topics it may publish to.
    pub fn grant(self: &Arc<Self>, allowed: Vec<String>) -> MessagingGrant {
        MessagingGrant {
            brokers: self.clone(),
            allowed: allowed.into(),
        }
    }
}

/// One component's view of messaging: the app's brokers and the topics it may publish to.
#[derive(Clone)]
pub struct MessagingGrant {
    brokers: Arc<MessagingBrokers>,
    allowed: Arc<[String]>,
}

/// `moa:messaging/producer` to the brokers of `[messaging]` (the embedded log by default).
pub struct MessagingCapability;

impl Capability for MessagingCapability {
    const NAME: &'static str = "messaging";
    const RUNTIME_CONFIG_SECTIONS: &'static [&'static str] = &["messaging"];
    const MANIFEST_KEYS: &'static [&'static str] = &["allowed_publish_topics"];
    const IMPORTS: &'static [&'static str] = &["moa:messaging/producer@0.1.0"];

    type AppState = Arc<MessagingBrokers>;
    type ComponentState = MessagingGrant;
    type InstanceState = MessagingGrant;
    type View<'a> = MessagingView<'a>;

    fn link<T: HasCapability<Self> + Send + 'static>(linker: &mut Linker<T>) -> Result<()> {
        producer::add_to_linker::<T, Messaging>(linker, T::capability_view)?;
        Ok(())
    }

    async fn configure(cx: &ConfigureContext<'_>) -> Result<Arc<MessagingBrokers>> {
        MessagingBrokers::configure(cx.runtime_config, cx.state_dir, cx.app, cx.metrics).await
    }

    fn component(
        brokers: &Arc<MessagingBrokers>,
        cx: &ComponentContext<'_>,
    ) -> Result<MessagingGrant> {
        Ok(brokers.grant(cx.strings("allowed_publish_topics")?))
    }

    fn instance(grant: &MessagingGrant) -> MessagingGrant {
        grant.clone()
    }

    fn view<'a>(parts: InstanceParts<'a, MessagingGrant>) -> MessagingView<'a> {
        MessagingView {
            grant: parts.state,
            invocation: parts.invocation,
        }
    }
}

/// What the host traits see: the grant and the invocation (its trace context goes on messages).
pub struct MessagingView<'a> {
    grant: &'a MessagingGrant,
    invocation: &'a Invocation,
}

/// Marker type naming this capability in the linker.
pub struct Messaging;

impl HasData for Messaging {
    type Data<'a> = MessagingView<'a>;
}

impl bindings::moa::messaging::types::Host for MessagingView<'_> {}

/// Why a component may not publish a message.
#[derive(Debug)]
pub enum Refusal {
    InvalidTopic(String),
    AccessDenied(String),
}

/// Headers whose names start with this belong to the host (`moa-message-id`, the dead-letter
/// headers): a component setting one could shadow the id consumers deduplicate on.
pub const RESERVED_HEADER_PREFIX: &str = "moa-";

/// Checks a message a component publishes (the topic's name, the component's
/// `allowed_publish_topics`, no header of the host's) and adds the invocation's trace context. The
/// documents outbox checks its messages with the same function.
pub fn check_outgoing(
    allowed: &[String],
    invocation: &Invocation,
    message: OutgoingMessage,
) -> Result<OutgoingMessage, Refusal> {
    if !moa_eventlog::is_valid_topic(&message.topic) {
        return Err(Refusal::InvalidTopic(format!(
            "`{}`: topics use 1-249 letters, digits, `.`, `_` and `-`",
            message.topic
        )));
    }
    if !allowed
        .iter()
        .any(|pattern| topic_matches(pattern, &message.topic))
    {
        return Err(Refusal::AccessDenied(format!(
            "topic `{}` is not in this component's allowed_publish_topics",
            message.topic
        )));
    }
    if let Some((name, _)) = message.headers.iter().find(|(name, _)| {
        name.get(..RESERVED_HEADER_PREFIX.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(RESERVED_HEADER_PREFIX))
    }) {
        return Err(Refusal::AccessDenied(format!(
            "header `{name}`: names starting with `{RESERVED_HEADER_PREFIX}` belong to the host (it sets `moa-message-id` itself)"
        )));
    }
    let mut message = message;
    if let Some(parent) = &invocation.traceparent
        && !message
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("traceparent"))
    {
        // A producer span for the publish (or the outbox staging it); the consumer's span is its
        // child, so the trace shows the broker hop.
        let span = if crate::telemetry::traces_exported() {
            tracing::info_span!(
                "messaging.publish",
                otel.name = %format!("{} publish", message.topic),
                otel.kind = "producer",
                topic = %message.topic,
            )
        } else {
            tracing::Span::none()
        };
        let traceparent =
            crate::telemetry::continue_trace(&span, Some(parent)).unwrap_or_else(|| parent.clone());
        message
            .headers
            .push(("traceparent".into(), traceparent.into_bytes()));
    }
    Ok(message)
}

impl MessagingView<'_> {
    /// Checks the topic and the grant, and adds the trace context.
    fn prepare(&self, message: Message) -> Result<OutgoingMessage, Error> {
        let outgoing = OutgoingMessage {
            topic: message.topic,
            key: message.key,
            payload: message.payload,
            headers: message
                .headers
                .into_iter()
                .map(|h| (h.name, h.value))
                .collect(),
        };
        check_outgoing(&self.grant.allowed, self.invocation, outgoing).map_err(|refusal| {
            match refusal {
                Refusal::InvalidTopic(m) => Error::InvalidTopic(m),
                Refusal::AccessDenied(m) => Error::AccessDenied(m),
            }
        })
    }
}

fn to_wit_error(err: PublishError) -> Error {
    match err {
        PublishError::InvalidTopic(m) => Error::InvalidTopic(m),
        PublishError::Unavailable(m) => Error::Unavailable(m),
        PublishError::TooLarge(m) => Error::TooLarge(m),
        PublishError::Other(m) => Error::Other(m),
    }
}

impl producer::Host for MessagingView<'_> {
    async fn publish(&mut self, message: Message) -> wasmtime::Result<Result<(), Error>> {
        let outgoing = match self.prepare(message) {
            Ok(outgoing) => outgoing,
            Err(err) => return Ok(Err(err)),
        };
        let broker = self.grant.brokers.broker_for(&outgoing.topic).clone();
        Ok(broker.publish(outgoing).await.map_err(to_wit_error))
    }

    async fn publish_batch(
        &mut self,
        messages: Vec<Message>,
    ) -> wasmtime::Result<Result<(), Error>> {
        // Every message is checked before any is sent, so a bad topic sends none.
        let mut outgoing = Vec::with_capacity(messages.len());
        for message in messages {
            match self.prepare(message) {
                Ok(m) => outgoing.push(m),
                Err(err) => return Ok(Err(err)),
            }
        }
        // One batch per broker, each in the component's order; brokers in parallel.
        let mut per_broker: Vec<(Arc<dyn Broker>, Vec<OutgoingMessage>)> = Vec::new();
        for message in outgoing {
            let broker = self.grant.brokers.broker_for(&message.topic);
            match per_broker.iter_mut().find(|(b, _)| Arc::ptr_eq(b, broker)) {
                Some((_, batch)) => batch.push(message),
                None => per_broker.push((broker.clone(), vec![message])),
            }
        }
        let sends = per_broker
            .into_iter()
            .map(|(broker, batch)| async move { broker.publish_batch(batch).await });
        let results = futures::future::join_all(sends).await;
        Ok(results
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), |err| Err(to_wit_error(err))))
    }
}
