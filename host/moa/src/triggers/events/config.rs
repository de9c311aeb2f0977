//! The event triggers' part of spin.toml: `[[trigger.kafka]]` and `[[trigger.redis-stream]]`
//! entries, checked at load with errors that name the line and the fix.

use moa_manifest::{LoadedManifest, ManifestError, Position, TriggerEntry};

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
    /// different keys (Redis Streams); with `batch` > 1, batches in flight at once.
    pub concurrency: u32,
    /// Deliveries handed to the component in one call (`moa:messaging/batch-handler`), 1 to
    /// [`MAX_BATCH`]; 1 (the default) calls `moa:messaging/handler` once per delivery.
    pub batch: u32,
    /// Deliveries of one message (the first included) before it goes to the dead-letter topic.
    pub max_attempts: u32,
    /// Wait before the first retry; it doubles with each retry, up to 30 s.
    pub retry_backoff_ms: u64,
    /// Where messages go after `max_attempts` failures (default `<topic>.dlq`).
    pub dead_letter: Option<String>,
    /// Redis Streams: entries idle this long on another consumer are claimed.
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

/// The largest `batch` a trigger accepts.
pub const MAX_BATCH: u32 = 1024;

/// The shortest `claim_idle_ms` a Redis Streams trigger accepts.
pub const MIN_CLAIM_IDLE_MS: u64 = 1000;

const KAFKA_FIELDS: &[&str] = &[
    "topics",
    "group",
    "concurrency",
    "batch",
    "max_attempts",
    "retry_backoff_ms",
    "dead_letter_topic",
];
const REDIS_STREAM_FIELDS: &[&str] = &[
    "stream",
    "group",
    "concurrency",
    "batch",
    "max_deliveries",
    "retry_backoff_ms",
    "claim_idle_ms",
    "dead_letter_stream",
];

/// Every event trigger entry of the app, checked.
pub fn from_manifest(app: &LoadedManifest) -> Result<Vec<EventTrigger>, ManifestError> {
    let mut triggers = Vec::new();
    for (name, kind) in [
        ("kafka", EventTriggerKind::Kafka),
        ("redis-stream", EventTriggerKind::RedisStream),
    ] {
        for entry in app.manifest.triggers_of(name) {
            triggers.push(entry_config(app, kind, entry)?);
        }
    }
    Ok(triggers)
}

fn entry_config(
    app: &LoadedManifest,
    kind: EventTriggerKind,
    entry: &TriggerEntry,
) -> Result<EventTrigger, ManifestError> {
    let path = &app.path;
    let (allowed, attempts_field, dead_letter_field) = match kind {
        EventTriggerKind::Kafka => (KAFKA_FIELDS, "max_attempts", "dead_letter_topic"),
        EventTriggerKind::RedisStream => {
            (REDIS_STREAM_FIELDS, "max_deliveries", "dead_letter_stream")
        }
    };
    entry.check_fields(path, allowed, |unknown| match (kind, unknown) {
        (EventTriggerKind::Kafka, "topic") => Some("write `topics = [\"...\"]`".into()),
        (EventTriggerKind::RedisStream, "topics" | "topic") => {
            Some("a redis-stream trigger reads one `stream = \"...\"`".into())
        }
        _ => None,
    })?;
    let component = entry.component.clone();
    let topics = match kind {
        EventTriggerKind::Kafka => match entry.get::<Vec<String>>(path, "topics")? {
            Some(topics) if !topics.value.is_empty() => {
                for topic in &topics.value {
                    check_topic(app, entry, topics.position, topic)?;
                }
                topics.value
            }
            Some(topics) => {
                return Err(entry.error(
                    path,
                    topics.position,
                    "[[trigger.kafka]] has an empty `topics`",
                    "list the topics to consume: `topics = [\"orders\"]`",
                ));
            }
            None => {
                return Err(entry.error(
                    path,
                    entry.position,
                    format!("[[trigger.kafka]] for `{component}` has no `topics`"),
                    "add `topics = [\"<topic>\"]`",
                ));
            }
        },
        EventTriggerKind::RedisStream => match entry.get::<String>(path, "stream")? {
            Some(stream) => {
                check_topic(app, entry, stream.position, &stream.value)?;
                vec![stream.value]
            }
            None => {
                return Err(entry.error(
                    path,
                    entry.position,
                    format!("[[trigger.redis-stream]] for `{component}` has no `stream`"),
                    "add `stream = \"<stream name>\"`",
                ));
            }
        },
    };
    let group = match entry.get::<String>(path, "group")? {
        Some(group) if group.value.trim().is_empty() => {
            return Err(entry.error(
                path,
                group.position,
                "`group` is empty",
                "name the consumer group, or remove `group` to use `<app>-<component>`",
            ));
        }
        Some(group) => group.value,
        None => format!("{}-{component}", app.manifest.name),
    };
    let positive = |field: &str, default: u32| -> Result<u32, ManifestError> {
        match entry.get::<u32>(path, field)? {
            Some(v) if v.value == 0 => Err(entry.error(
                path,
                v.position,
                format!("`{field}` must be at least 1"),
                format!("remove `{field}` to use the default ({default})"),
            )),
            Some(v) => Ok(v.value),
            None => Ok(default),
        }
    };
    let concurrency = positive("concurrency", 8)?;
    let batch = positive("batch", 1)?;
    if batch > MAX_BATCH {
        let position = entry
            .get::<u32>(path, "batch")?
            .map_or(entry.position, |b| b.position);
        return Err(entry.error(
            path,
            position,
            format!("`batch` is {batch}; at most {MAX_BATCH} deliveries go in one call"),
            format!("set `batch` to {MAX_BATCH} or less (32-128 gives most of the gain)"),
        ));
    }
    let max_attempts = positive(attempts_field, 5)?;
    let claim_idle = entry.get::<u64>(path, "claim_idle_ms")?;
    if let Some(idle) = &claim_idle
        && idle.value < MIN_CLAIM_IDLE_MS
    {
        return Err(entry.error(
            path,
            idle.position,
            format!("`claim_idle_ms` must be at least {MIN_CLAIM_IDLE_MS}"),
            format!(
                "a host refreshes the entries it holds every claim_idle_ms / 4; below {MIN_CLAIM_IDLE_MS} ms a busy but healthy host could lose them to another: raise it or remove it to use the default (30000)"
            ),
        ));
    }
    let dead_letter = entry.get::<String>(path, dead_letter_field)?;
    if let Some(d) = &dead_letter {
        check_topic(app, entry, d.position, &d.value)?;
        if topics.contains(&d.value) {
            return Err(entry.error(
                path,
                d.position,
                format!(
                    "the dead-letter topic `{}` is also consumed by this trigger",
                    d.value
                ),
                "dead-lettered messages would come straight back; name another topic",
            ));
        }
    }
    Ok(EventTrigger {
        kind,
        component,
        topics,
        group,
        concurrency,
        batch,
        max_attempts,
        retry_backoff_ms: entry
            .get::<u64>(path, "retry_backoff_ms")?
            .map_or(500, |v| v.value),
        dead_letter: dead_letter.map(|d| d.value),
        claim_idle_ms: claim_idle.map_or(30_000, |v| v.value),
        position: entry.position,
    })
}

/// Kafka's topic name rule (Redis stream names follow it too, so one name works on every broker).
fn check_topic(
    app: &LoadedManifest,
    entry: &TriggerEntry,
    position: Position,
    topic: &str,
) -> Result<(), ManifestError> {
    if moa_eventlog::is_valid_topic(topic) {
        Ok(())
    } else {
        Err(entry.error(
            &app.path,
            position,
            format!("invalid topic name `{topic}`"),
            "topic and stream names use 1-249 letters, digits, `.`, `_` and `-`",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const APP: &str = "spin_manifest_version = 2\n[application]\nname = \"shop\"\n[component.hello]\nsource = \"a.wasm\"\n";

    fn load(entries: &str) -> Result<Vec<EventTrigger>, ManifestError> {
        let manifest = moa_manifest::parse(
            Path::new("spin.toml"),
            &format!("{APP}{entries}"),
            moa_manifest::HostKeys {
                component_keys: &[],
                trigger_kinds: &["kafka", "redis-stream"],
            },
        )?;
        from_manifest(&LoadedManifest {
            path: "spin.toml".into(),
            base_dir: ".".into(),
            manifest,
        })
    }

    fn err(entries: &str) -> (usize, String) {
        let err = load(entries).unwrap_err();
        (err.position().map_or(0, |p| p.line), err.to_string())
    }

    #[test]
    fn event_triggers_are_read_with_defaults() {
        let triggers = load(
            "[[trigger.kafka]]\ntopics = [\"orders\", \"payments\"]\ncomponent = \"hello\"\nmax_attempts = 3\n\n[[trigger.redis-stream]]\nstream = \"chat\"\ncomponent = \"hello\"\ngroup = \"ai\"\nclaim_idle_ms = 1000\n",
        )
        .unwrap();
        let kafka = &triggers[0];
        assert_eq!(kafka.kind, EventTriggerKind::Kafka);
        assert_eq!(kafka.topics, ["orders", "payments"]);
        assert_eq!(kafka.group, "shop-hello");
        assert_eq!((kafka.max_attempts, kafka.concurrency), (3, 8));
        assert_eq!(kafka.dead_letter_for("orders"), "orders.dlq");
        let redis = &triggers[1];
        assert_eq!(redis.kind, EventTriggerKind::RedisStream);
        assert_eq!((redis.group.as_str(), redis.claim_idle_ms), ("ai", 1000));
        assert_eq!(redis.topics, ["chat"]);
    }

    #[test]
    fn event_trigger_mistakes_name_the_field_and_the_line() {
        let (line, msg) = err("[[trigger.kafka]]\ntopic = \"orders\"\ncomponent = \"hello\"\n");
        assert_eq!(line, 7);
        assert!(
            msg.contains("unknown field `topic`") && msg.contains("topics = ["),
            "{msg}"
        );
        let (_, msg) = err("[[trigger.redis-stream]]\nstream = \"a b\"\ncomponent = \"hello\"\n");
        assert!(msg.contains("invalid topic name `a b`"), "{msg}");
        let (line, msg) =
            err("[[trigger.kafka]]\ntopics = [\"o\"]\ncomponent = \"hello\"\nmax_attempts = 0\n");
        assert_eq!(line, 9);
        assert!(msg.contains("`max_attempts` must be at least 1"), "{msg}");
        let (_, msg) = err(
            "[[trigger.kafka]]\ntopics = [\"o\"]\ncomponent = \"hello\"\ndead_letter_topic = \"o\"\n",
        );
        assert!(msg.contains("also consumed"), "{msg}");
        let (_, msg) = err(
            "[[trigger.redis-stream]]\nstream = \"s\"\ncomponent = \"hello\"\nclaim_idle_ms = 500\n",
        );
        assert!(msg.contains("at least 1000"), "{msg}");
        let (_, msg) = err("[[trigger.kafka]]\ntopics = \"o\"\ncomponent = \"hello\"\n");
        assert!(msg.contains("`topics`"), "{msg}");
    }
}
