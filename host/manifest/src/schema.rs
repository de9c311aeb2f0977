//! The manifest's shape: raw serde types that keep source spans, and the validated types
//! the host consumes.

use crate::Position;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use toml::Spanned;

// ---------- raw, as written in the file ----------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawManifest {
    pub spin_manifest_version: Option<Spanned<toml::Value>>,
    pub application: Spanned<RawApplication>,
    #[serde(default)]
    pub variables: BTreeMap<Spanned<String>, Spanned<RawVariable>>,
    #[serde(default)]
    pub trigger: BTreeMap<Spanned<String>, Vec<Spanned<RawTrigger>>>,
    #[serde(default)]
    pub component: BTreeMap<Spanned<String>, Spanned<RawComponent>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApplication {
    pub name: String,
    pub version: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub authors: Vec<String>,
    #[serde(default)]
    pub trigger: BTreeMap<String, toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVariable {
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
}

/// One `[[trigger.<type>]]` entry with the fields of every trigger type moa runs. Validation
/// checks which fields the entry's type allows (and rejects unknown ones by name).
#[derive(Debug, Deserialize)]
pub(crate) struct RawTrigger {
    pub route: Option<Spanned<toml::Value>>,
    pub component: Option<Spanned<toml::Value>>,
    pub executor: Option<Spanned<toml::Value>>,
    pub topics: Option<Spanned<Vec<String>>>,
    pub stream: Option<Spanned<String>>,
    pub group: Option<Spanned<String>>,
    pub concurrency: Option<Spanned<u32>>,
    pub max_attempts: Option<Spanned<u32>>,
    pub max_deliveries: Option<Spanned<u32>>,
    pub retry_backoff_ms: Option<Spanned<u64>>,
    pub claim_idle_ms: Option<Spanned<u64>>,
    pub dead_letter_topic: Option<Spanned<String>>,
    pub dead_letter_stream: Option<Spanned<String>>,
}

/// The core keys of a component; the host's capabilities read the others (see
/// [`Component::capability_settings`]), and a key neither knows is an error.
#[derive(Debug, Deserialize)]
pub(crate) struct RawComponent {
    pub source: Spanned<toml::Value>,
    pub description: Option<String>,
    #[serde(default)]
    pub files: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    pub exclude_files: Vec<String>,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<Spanned<String>>,
    pub allowed_http_hosts: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub variables: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    pub build: Option<Spanned<RawBuild>>,
    pub dependencies: Option<Spanned<toml::Value>>,
    /// moa's own per-component settings (`[component.<id>.moa]`), ignored by Spin.
    pub moa: Option<Spanned<RawComponentLimits>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBuild {
    pub command: Spanned<toml::Value>,
    pub workdir: Option<String>,
    #[serde(default)]
    pub watch: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawComponentLimits {
    pub memory_limit_mb: Option<u64>,
    pub request_timeout_ms: Option<u64>,
}

// ---------- validated ----------

/// A value together with where it was written in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub position: Position,
}

/// A validated `spin.toml`.
#[derive(Debug, Clone)]
pub struct AppManifest {
    pub name: String,
    pub version: Option<String>,
    pub description: Option<String>,
    pub authors: Vec<String>,
    /// `[application.trigger.http] base`, default `/`.
    pub http_base: String,
    pub variables: BTreeMap<String, VariableDecl>,
    pub http_triggers: Vec<HttpTrigger>,
    /// `[[trigger.kafka]]` and `[[trigger.redis-stream]]` entries.
    pub event_triggers: Vec<EventTrigger>,
    pub components: BTreeMap<String, Component>,
}

/// An application variable from `[variables]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableDecl {
    pub default: Option<String>,
    pub required: bool,
    pub secret: bool,
}

/// One `[[trigger.http]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTrigger {
    pub route: HttpRoute,
    pub component: String,
    pub position: Position,
}

/// Which event trigger type an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventTriggerKind {
    /// `[[trigger.kafka]]`: a consumer group over Kafka topics.
    Kafka,
    /// `[[trigger.redis-stream]]`: a consumer group over one Redis stream.
    RedisStream,
}

impl EventTriggerKind {
    /// The manifest's name of the trigger type.
    pub fn as_str(self) -> &'static str {
        match self {
            EventTriggerKind::Kafka => "kafka",
            EventTriggerKind::RedisStream => "redis-stream",
        }
    }
}

/// One `[[trigger.kafka]]` or `[[trigger.redis-stream]]` entry: deliver every message of
/// `topics` to `component`'s `moa:messaging/handler`, as consumer group `group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTrigger {
    pub kind: EventTriggerKind,
    pub component: String,
    /// Kafka topics, or the one Redis stream.
    pub topics: Vec<String>,
    /// Consumer group (default `<app name>-<component id>`).
    pub group: String,
    /// Deliveries in flight at once: partitions in parallel (Kafka, embedded) or entries with
    /// different keys (Redis Streams).
    pub concurrency: u32,
    /// Deliveries of one message (the first included) before it goes to the dead-letter topic.
    pub max_attempts: u32,
    /// Wait before the first retry; it doubles with each retry, up to 30 s.
    pub retry_backoff_ms: u64,
    /// Where messages go after `max_attempts` failures (default `<topic>.dlq`).
    pub dead_letter: Option<String>,
    /// Redis Streams: entries pending longer than this on another consumer are claimed.
    pub claim_idle_ms: u64,
    pub position: Position,
}

impl EventTrigger {
    /// The dead-letter topic for messages of `topic`.
    pub fn dead_letter_for(&self, topic: &str) -> String {
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("{topic}.dlq"))
    }
}

/// Where an HTTP trigger listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpRoute {
    /// A route pattern: an exact path, or a prefix ending in `/...`.
    Path(String),
    /// `route = { private = true }`: reachable only from other components, never from outside.
    Private,
}

/// A `[component.<id>]` table.
#[derive(Debug, Clone)]
pub struct Component {
    pub id: String,
    pub description: Option<String>,
    /// Path to the `.wasm` file, relative to the manifest directory.
    pub source: Located<PathBuf>,
    pub files: Vec<FileMount>,
    pub exclude_files: Vec<String>,
    pub allowed_outbound_hosts: Vec<Located<String>>,
    /// Keys read by the host's capabilities (`key_value_stores`, `ai_models`,
    /// `allowed_publish_topics`, ...), as written; which keys are allowed is the caller's list.
    pub capability_settings: BTreeMap<String, Located<toml::Value>>,
    /// Component variables: name -> template (may reference `{{ app_variable }}`).
    pub variables: BTreeMap<String, Located<String>>,
    pub environment: BTreeMap<String, String>,
    pub build: Option<BuildConfig>,
    pub limits: ComponentLimits,
    pub position: Position,
}

/// A `files` entry: files from the host made visible to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileMount {
    /// A glob relative to the manifest directory, mounted at the same relative path under `/`.
    Pattern(String),
    /// A host directory mounted at a guest path.
    Directory {
        source: PathBuf,
        destination: String,
    },
}

/// `[component.<id>.build]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildConfig {
    /// The commands to run, in order, through the shell.
    pub commands: Vec<String>,
    pub workdir: Option<String>,
    pub watch: Vec<String>,
}

/// Per-component limits from `[component.<id>.moa]`; `None` means the host default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ComponentLimits {
    pub memory_limit_mb: Option<u64>,
    pub request_timeout_ms: Option<u64>,
}

impl AppManifest {
    /// The components named by at least one trigger, in id order.
    pub fn triggered_components(&self) -> impl Iterator<Item = &Component> {
        self.components.values().filter(|c| {
            self.http_triggers.iter().any(|t| t.component == c.id)
                || self.event_triggers.iter().any(|t| t.component == c.id)
        })
    }

    /// Whether an HTTP trigger names `component`.
    pub fn has_http_trigger(&self, component: &str) -> bool {
        self.http_triggers.iter().any(|t| t.component == component)
    }

    /// Whether an event trigger names `component`.
    pub fn has_event_trigger(&self, component: &str) -> bool {
        self.event_triggers.iter().any(|t| t.component == component)
    }
}

/// Every `[component.<id>]` key the manifest itself reads; the rest belong to capabilities.
pub const CORE_COMPONENT_KEYS: &[&str] = &[
    "source",
    "description",
    "files",
    "exclude_files",
    "allowed_outbound_hosts",
    "allowed_http_hosts",
    "variables",
    "environment",
    "build",
    "dependencies",
    "moa",
];

impl Component {
    /// The capability setting `key` as a list of non-empty strings (empty when absent), e.g.
    /// `key_value_stores = ["default"]`. Errors name the file, the line and the fix.
    pub fn string_list(
        &self,
        manifest: &std::path::Path,
        key: &str,
    ) -> Result<Vec<Located<String>>, crate::ManifestError> {
        let Some(setting) = self.capability_settings.get(key) else {
            return Ok(Vec::new());
        };
        let invalid = |message: String| crate::ManifestError::Invalid {
            path: manifest.to_path_buf(),
            position: Some(setting.position),
            message,
            help: format!("write `{key} = [\"name\", ...]`"),
        };
        let Some(items) = setting.value.as_array() else {
            return Err(invalid(format!(
                "component `{}`: `{key}` must be a list of strings",
                self.id
            )));
        };
        items
            .iter()
            .map(|item| match item.as_str() {
                Some(text) if !text.trim().is_empty() => Ok(Located {
                    value: text.to_string(),
                    position: setting.position,
                }),
                Some(_) => Err(invalid(format!(
                    "component `{}`: `{key}` has an empty entry",
                    self.id
                ))),
                None => Err(invalid(format!(
                    "component `{}`: `{key}` entries must be strings",
                    self.id
                ))),
            })
            .collect()
    }
}
