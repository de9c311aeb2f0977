//! Turns the raw manifest into an [`AppManifest`], checking every cross-reference
//! (trigger -> component, template -> variable, routes) and reporting the first mistake with its line.

use crate::schema::*;
use crate::template::{Template, is_valid_variable_name};
use crate::{ManifestError, Position, UNSUPPORTED_TRIGGERS};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use toml::Spanned;

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn pos<T>(&self, spanned: &Spanned<T>) -> Position {
        Position::from_offset(self.text, spanned.span().start)
    }

    fn err(
        &self,
        position: Position,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> ManifestError {
        ManifestError::Invalid {
            path: self.path.to_path_buf(),
            position: Some(position),
            message: message.into(),
            help: help.into(),
        }
    }
}

/// Every component's capability settings (keys that are not core keys), checked against
/// `capability_keys` before the typed parse, so a misspelt key is reported as such.
pub(crate) type Settings = BTreeMap<String, BTreeMap<String, Located<toml::Value>>>;

pub(crate) fn capability_settings(
    path: &Path,
    text: &str,
    capability_keys: &[&str],
) -> Result<Settings, ManifestError> {
    let cx = Ctx { path, text };
    let mut out = BTreeMap::new();
    for (id, keys) in component_settings(text) {
        out.insert(id.clone(), settings_of(&cx, &id, keys, capability_keys)?);
    }
    Ok(out)
}

pub(crate) fn validate(
    path: &Path,
    text: &str,
    raw: RawManifest,
    mut settings: Settings,
) -> Result<AppManifest, ManifestError> {
    let cx = Ctx { path, text };
    check_version(&cx, &raw)?;

    let application = raw.application.into_inner();
    let http_base = application
        .trigger
        .get("http")
        .and_then(|t| t.get("base"))
        .and_then(|b| b.as_str())
        .unwrap_or("/")
        .to_string();

    let mut variables = BTreeMap::new();
    for (name, decl) in raw.variables {
        let position = cx.pos(&name);
        let name = name.into_inner();
        if !is_valid_variable_name(&name) {
            return Err(cx.err(
                position,
                format!("invalid variable name `{name}`"),
                "variable names use lowercase letters, digits and `_`, and start with a letter",
            ));
        }
        let decl = decl.into_inner();
        if decl.required && decl.default.is_some() {
            return Err(cx.err(
                position,
                format!("variable `{name}` is both `required` and has a `default`"),
                "keep `required = true` (the value must be supplied) or the `default`, not both",
            ));
        }
        variables.insert(
            name,
            VariableDecl {
                default: decl.default,
                required: decl.required,
                secret: decl.secret,
            },
        );
    }

    let mut components = BTreeMap::new();
    for (id, component) in raw.component {
        let component_settings = settings.remove(id.get_ref()).unwrap_or_default();
        let mut component = validate_component(&cx, id, component, &variables)?;
        component.capability_settings = component_settings;
        components.insert(component.id.clone(), component);
    }

    // Field names per trigger entry, to reject unknown ones (spans are not needed for that).
    let trigger_keys = trigger_keys(text);
    let mut http_triggers = Vec::new();
    let mut event_triggers = Vec::new();
    for (kind, entries) in raw.trigger {
        let kind_position = cx.pos(&kind);
        let kind = kind.into_inner();
        let event_kind = match kind.as_str() {
            "kafka" => Some(EventTriggerKind::Kafka),
            "redis-stream" => Some(EventTriggerKind::RedisStream),
            _ => None,
        };
        if let Some(event_kind) = event_kind {
            for (index, entry) in entries.into_iter().enumerate() {
                let keys = trigger_keys
                    .get(&kind)
                    .and_then(|list| list.get(index))
                    .cloned()
                    .unwrap_or_default();
                event_triggers.push(validate_event_trigger(
                    &cx,
                    event_kind,
                    entry,
                    &keys,
                    &components,
                    &application.name,
                )?);
            }
            continue;
        }
        if kind != "http" {
            let help = UNSUPPORTED_TRIGGERS
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, why)| why.to_string())
                .unwrap_or_else(|| {
                    "moa runs `[[trigger.http]]`, `[[trigger.kafka]]` and `[[trigger.redis-stream]]`; check the spelling of the trigger type".into()
                });
            let position = entries.first().map(|e| cx.pos(e)).unwrap_or(kind_position);
            return Err(cx.err(
                position,
                format!("trigger type `{kind}` is not supported by this version of moa"),
                help,
            ));
        }
        for entry in entries {
            http_triggers.push(validate_http_trigger(&cx, entry, &components)?);
        }
    }
    check_duplicate_routes(&cx, &http_triggers)?;

    Ok(AppManifest {
        name: application.name,
        version: application.version,
        description: application.description,
        authors: application.authors,
        http_base,
        variables,
        http_triggers,
        event_triggers,
        components,
    })
}

/// The keys of every `[[trigger.<kind>]]` entry, in file order.
/// Every component's keys with their values and positions, for the keys capabilities read.
fn component_settings(
    text: &str,
) -> BTreeMap<String, BTreeMap<Spanned<String>, Spanned<toml::Value>>> {
    #[derive(serde::Deserialize)]
    struct Keys {
        #[serde(default)]
        component: BTreeMap<String, BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
    }
    toml::from_str::<Keys>(text)
        .map(|keys| keys.component)
        .unwrap_or_default()
}

/// The component's keys that are not core keys: each must be one a capability reads.
fn settings_of(
    cx: &Ctx,
    id: &str,
    keys: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    capability_keys: &[&str],
) -> Result<BTreeMap<String, Located<toml::Value>>, ManifestError> {
    let mut settings = BTreeMap::new();
    for (key, value) in keys {
        if CORE_COMPONENT_KEYS.contains(&key.get_ref().as_str()) {
            continue;
        }
        if !capability_keys.contains(&key.get_ref().as_str()) {
            let mut known: Vec<&str> = CORE_COMPONENT_KEYS.to_vec();
            known.extend_from_slice(capability_keys);
            return Err(cx.err(
                cx.pos(&key),
                format!("component `{id}`: unknown field `{}`", key.get_ref()),
                format!(
                    "remove or rename it; a component may have: {}",
                    known.join(", ")
                ),
            ));
        }
        let position = cx.pos(&value);
        settings.insert(
            key.into_inner(),
            Located {
                value: value.into_inner(),
                position,
            },
        );
    }
    Ok(settings)
}

fn trigger_keys(text: &str) -> BTreeMap<String, Vec<Vec<String>>> {
    let mut out = BTreeMap::new();
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return out;
    };
    let Some(toml::Value::Table(triggers)) = table.get("trigger") else {
        return out;
    };
    for (kind, entries) in triggers {
        if let toml::Value::Array(entries) = entries {
            let keys = entries
                .iter()
                .map(|e| {
                    e.as_table()
                        .map(|t| t.keys().cloned().collect())
                        .unwrap_or_default()
                })
                .collect();
            out.insert(kind.clone(), keys);
        }
    }
    out
}

const KAFKA_FIELDS: &[&str] = &[
    "component",
    "topics",
    "group",
    "concurrency",
    "max_attempts",
    "retry_backoff_ms",
    "dead_letter_topic",
];
const REDIS_STREAM_FIELDS: &[&str] = &[
    "component",
    "stream",
    "group",
    "concurrency",
    "max_deliveries",
    "retry_backoff_ms",
    "claim_idle_ms",
    "dead_letter_stream",
];

fn validate_event_trigger(
    cx: &Ctx,
    kind: EventTriggerKind,
    entry: Spanned<RawTrigger>,
    keys: &[String],
    components: &BTreeMap<String, Component>,
    app_name: &str,
) -> Result<EventTrigger, ManifestError> {
    let position = cx.pos(&entry);
    let name = kind.as_str();
    let allowed = match kind {
        EventTriggerKind::Kafka => KAFKA_FIELDS,
        EventTriggerKind::RedisStream => REDIS_STREAM_FIELDS,
    };
    if let Some(unknown) = keys.iter().find(|k| !allowed.contains(&k.as_str())) {
        let hint = match (kind, unknown.as_str()) {
            (EventTriggerKind::Kafka, "topic") => "write `topics = [\"...\"]`".to_string(),
            (EventTriggerKind::RedisStream, "topics" | "topic") => {
                "a redis-stream trigger reads one `stream = \"...\"`".to_string()
            }
            _ => format!("[[trigger.{name}]] takes: {}", allowed.join(", ")),
        };
        return Err(cx.err(
            position,
            format!("[[trigger.{name}]] has unknown field `{unknown}`"),
            hint,
        ));
    }
    let raw = entry.into_inner();
    let component = trigger_component(cx, name, position, raw.component, components)?;
    let topics = match kind {
        EventTriggerKind::Kafka => match raw.topics {
            Some(t) if !t.get_ref().is_empty() => {
                let topics_position = cx.pos(&t);
                let topics = t.into_inner();
                for topic in &topics {
                    check_topic(cx, topics_position, topic)?;
                }
                topics
            }
            Some(t) => {
                return Err(cx.err(
                    cx.pos(&t),
                    "[[trigger.kafka]] has an empty `topics`",
                    "list the topics to consume: `topics = [\"orders\"]`",
                ));
            }
            None => {
                return Err(cx.err(
                    position,
                    format!("[[trigger.kafka]] for `{component}` has no `topics`"),
                    "add `topics = [\"<topic>\"]`",
                ));
            }
        },
        EventTriggerKind::RedisStream => match raw.stream {
            Some(s) => {
                check_topic(cx, cx.pos(&s), s.get_ref())?;
                vec![s.into_inner()]
            }
            None => {
                return Err(cx.err(
                    position,
                    format!("[[trigger.redis-stream]] for `{component}` has no `stream`"),
                    "add `stream = \"<stream name>\"`",
                ));
            }
        },
    };
    let group = match raw.group {
        Some(g) => {
            if g.get_ref().trim().is_empty() {
                return Err(cx.err(
                    cx.pos(&g),
                    "`group` is empty",
                    "name the consumer group, or remove `group` to use `<app>-<component>`",
                ));
            }
            g.into_inner()
        }
        None => format!("{app_name}-{component}"),
    };
    let positive = |value: Option<Spanned<u32>>, field: &str, default: u32| match value {
        Some(v) if *v.get_ref() == 0 => Err(cx.err(
            cx.pos(&v),
            format!("`{field}` must be at least 1"),
            format!("remove `{field}` to use the default ({default})"),
        )),
        Some(v) => Ok(v.into_inner()),
        None => Ok(default),
    };
    let concurrency = positive(raw.concurrency, "concurrency", 8)?;
    let max_attempts = match kind {
        EventTriggerKind::Kafka => positive(raw.max_attempts, "max_attempts", 5)?,
        EventTriggerKind::RedisStream => positive(raw.max_deliveries, "max_deliveries", 5)?,
    };
    if let Some(idle) = &raw.claim_idle_ms
        && *idle.get_ref() < MIN_CLAIM_IDLE_MS
    {
        return Err(cx.err(
            cx.pos(idle),
            format!("`claim_idle_ms` must be at least {MIN_CLAIM_IDLE_MS}"),
            format!(
                "a host refreshes the entries it holds every claim_idle_ms / 4; below {MIN_CLAIM_IDLE_MS} ms a busy but healthy host could lose them to another: raise it or remove it to use the default (30000)"
            ),
        ));
    }
    let dead_letter = match kind {
        EventTriggerKind::Kafka => raw.dead_letter_topic,
        EventTriggerKind::RedisStream => raw.dead_letter_stream,
    };
    if let Some(d) = &dead_letter {
        check_topic(cx, cx.pos(d), d.get_ref())?;
        if topics.contains(d.get_ref()) {
            return Err(cx.err(
                cx.pos(d),
                format!(
                    "the dead-letter topic `{}` is also consumed by this trigger",
                    d.get_ref()
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
        max_attempts,
        retry_backoff_ms: raw.retry_backoff_ms.map_or(500, Spanned::into_inner),
        dead_letter: dead_letter.map(Spanned::into_inner),
        claim_idle_ms: raw.claim_idle_ms.map_or(30_000, Spanned::into_inner),
        position,
    })
}

/// The shortest `claim_idle_ms` a Redis Streams trigger accepts.
pub const MIN_CLAIM_IDLE_MS: u64 = 1000;

/// The component a trigger names: it must be a string id of a declared component.
fn trigger_component(
    cx: &Ctx,
    trigger: &str,
    position: Position,
    component: Option<Spanned<toml::Value>>,
    components: &BTreeMap<String, Component>,
) -> Result<String, ManifestError> {
    let Some(component) = component else {
        return Err(cx.err(
            position,
            format!("[[trigger.{trigger}]] has no `component`"),
            "add `component = \"<component id>\"`",
        ));
    };
    let component_position = cx.pos(&component);
    let component = match component.into_inner() {
        toml::Value::String(s) => s,
        toml::Value::Table(_) => {
            return Err(cx.err(
                component_position,
                "inline components are not supported by moa yet",
                "declare the component as [component.<id>] and write `component = \"<id>\"`",
            ));
        }
        _ => {
            return Err(cx.err(
                component_position,
                "`component` must be a component id",
                "write `component = \"<component id>\"`",
            ));
        }
    };
    if !components.contains_key(&component) {
        let known = components.keys().cloned().collect::<Vec<_>>().join(", ");
        return Err(cx.err(
            component_position,
            format!("trigger references component `{component}`, which is not defined"),
            if known.is_empty() {
                format!("add a [component.{component}] table")
            } else {
                format!("add a [component.{component}] table, or use one of: {known}")
            },
        ));
    }
    Ok(component)
}

/// Kafka's topic name rule (Redis stream names follow it too, so one name works on every broker).
fn check_topic(cx: &Ctx, position: Position, topic: &str) -> Result<(), ManifestError> {
    let valid = !topic.is_empty()
        && topic.len() < 250
        && topic != "."
        && topic != ".."
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(cx.err(
            position,
            format!("invalid topic name `{topic}`"),
            "topic and stream names use 1-249 letters, digits, `.`, `_` and `-`",
        ))
    }
}

fn check_version(cx: &Ctx, raw: &RawManifest) -> Result<(), ManifestError> {
    let Some(version) = &raw.spin_manifest_version else {
        return Err(ManifestError::Invalid {
            path: cx.path.to_path_buf(),
            position: Some(Position { line: 1, column: 1 }),
            message: "missing `spin_manifest_version`".into(),
            help: "start the file with `spin_manifest_version = 2`".into(),
        });
    };
    match version.get_ref() {
        toml::Value::Integer(2) => Ok(()),
        other => Err(cx.err(
            cx.pos(version),
            format!("unsupported spin_manifest_version {other}"),
            "moa reads manifest version 2 (`spin_manifest_version = 2`); convert a version 1 manifest with `spin doctor` or by hand",
        )),
    }
}

fn is_valid_component_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.ends_with('-')
        && !id.contains("--")
}

fn validate_component(
    cx: &Ctx,
    id: Spanned<String>,
    component: Spanned<RawComponent>,
    variables: &BTreeMap<String, VariableDecl>,
) -> Result<Component, ManifestError> {
    let position = cx.pos(&id);
    let id = id.into_inner();
    if !is_valid_component_id(&id) {
        return Err(cx.err(
            position,
            format!("invalid component id `{id}`"),
            "component ids are kebab-case: lowercase letters, digits and single `-`, starting with a letter (e.g. `order-api`)",
        ));
    }
    let raw = component.into_inner();

    let source_position = cx.pos(&raw.source);
    let source = match raw.source.get_ref() {
        toml::Value::String(s) if !s.trim().is_empty() => PathBuf::from(s),
        toml::Value::Table(t) if t.contains_key("url") => {
            return Err(cx.err(
                source_position,
                format!("component `{id}`: remote sources (`url`) are not supported yet"),
                "download the .wasm file and set `source = \"path/to/file.wasm\"`",
            ));
        }
        _ => {
            return Err(cx.err(
                source_position,
                format!("component `{id}`: `source` must be a path to a .wasm file"),
                "write `source = \"target/wasm32-wasip2/release/name.wasm\"`",
            ));
        }
    };

    if let Some(hosts) = &raw.allowed_http_hosts {
        return Err(cx.err(
            cx.pos(hosts),
            format!("component `{id}`: `allowed_http_hosts` is the version 1 field"),
            "rename it to `allowed_outbound_hosts` and write each entry as `https://host[:port]`",
        ));
    }
    if let Some(deps) = &raw.dependencies {
        return Err(cx.err(
            cx.pos(deps),
            format!("component `{id}`: component dependencies are not supported by moa yet"),
            "compose the component ahead of time (e.g. with `wac plug`) and point `source` at the result",
        ));
    }

    let mut files = Vec::new();
    for entry in raw.files {
        let entry_position = cx.pos(&entry);
        match entry.into_inner() {
            toml::Value::String(pattern) => files.push(FileMount::Pattern(pattern)),
            toml::Value::Table(t) => {
                let source = t.get("source").and_then(|v| v.as_str());
                let destination = t.get("destination").and_then(|v| v.as_str());
                match (source, destination) {
                    (Some(source), Some(destination)) if destination.starts_with('/') => files
                        .push(FileMount::Directory {
                            source: PathBuf::from(source),
                            destination: destination.to_string(),
                        }),
                    _ => {
                        return Err(cx.err(
                            entry_position,
                            format!("component `{id}`: a `files` table needs `source` and an absolute `destination`"),
                            "write `{ source = \"assets\", destination = \"/assets\" }` or a glob string like `\"static/**\"`",
                        ));
                    }
                }
            }
            _ => {
                return Err(cx.err(
                    entry_position,
                    format!("component `{id}`: `files` entries are glob strings or source/destination tables"),
                    "write `files = [\"static/**\"]` or `files = [{ source = \"assets\", destination = \"/\" }]`",
                ));
            }
        }
    }

    let mut component_variables = BTreeMap::new();
    for (name, template) in raw.variables {
        let name_position = cx.pos(&name);
        let name = name.into_inner();
        if !is_valid_variable_name(&name) {
            return Err(cx.err(
                name_position,
                format!("component `{id}`: invalid variable name `{name}`"),
                "variable names use lowercase letters, digits and `_`, and start with a letter",
            ));
        }
        let template_position = cx.pos(&template);
        let text = template.into_inner();
        check_template(cx, template_position, &id, &text, variables)?;
        component_variables.insert(
            name,
            Located {
                value: text,
                position: template_position,
            },
        );
    }

    let mut allowed_outbound_hosts = Vec::new();
    for host in raw.allowed_outbound_hosts {
        let host_position = cx.pos(&host);
        let text = host.into_inner();
        check_template(cx, host_position, &id, &text, variables)?;
        allowed_outbound_hosts.push(Located {
            value: text,
            position: host_position,
        });
    }

    let build = match raw.build {
        None => None,
        Some(build) => {
            let build = build.into_inner();
            let command_position = cx.pos(&build.command);
            let commands = match build.command.into_inner() {
                toml::Value::String(s) => vec![s],
                toml::Value::Array(items) => items
                    .into_iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        cx.err(
                            command_position,
                            format!("component `{id}`: `build.command` entries must be strings"),
                            "write `command = \"cargo build --target wasm32-wasip2 --release\"`",
                        )
                    })?,
                _ => {
                    return Err(cx.err(
                        command_position,
                        format!("component `{id}`: `build.command` must be a string or a list of strings"),
                        "write `command = \"cargo build --target wasm32-wasip2 --release\"`",
                    ));
                }
            };
            Some(BuildConfig {
                commands,
                workdir: build.workdir,
                watch: build.watch,
            })
        }
    };

    let limits = match raw.moa {
        None => ComponentLimits::default(),
        Some(limits) => {
            let limits_position = cx.pos(&limits);
            let limits = limits.into_inner();
            if limits.memory_limit_mb == Some(0) || limits.request_timeout_ms == Some(0) {
                return Err(cx.err(
                    limits_position,
                    format!("component `{id}`: limits must be greater than zero"),
                    "remove the setting to use the host default, or give a positive number",
                ));
            }
            ComponentLimits {
                memory_limit_mb: limits.memory_limit_mb,
                request_timeout_ms: limits.request_timeout_ms,
            }
        }
    };

    Ok(Component {
        id,
        description: raw.description,
        source: Located {
            value: source,
            position: source_position,
        },
        files,
        exclude_files: raw.exclude_files,
        allowed_outbound_hosts,
        capability_settings: BTreeMap::new(),
        variables: component_variables,
        environment: raw.environment,
        build,
        limits,
        position,
    })
}

fn check_template(
    cx: &Ctx,
    position: Position,
    component: &str,
    text: &str,
    variables: &BTreeMap<String, VariableDecl>,
) -> Result<(), ManifestError> {
    let template = Template::parse(text).map_err(|why| {
        cx.err(
            position,
            format!("component `{component}`: {why}"),
            "write references as `{{ variable_name }}`",
        )
    })?;
    for name in template.variables() {
        if !variables.contains_key(name) {
            return Err(cx.err(
                position,
                format!("component `{component}` references variable `{name}`, which is not declared in [variables]"),
                format!("add `{name} = {{ default = \"...\" }}` (or `{{ required = true }}`) under [variables]"),
            ));
        }
    }
    Ok(())
}

fn validate_http_trigger(
    cx: &Ctx,
    entry: Spanned<RawTrigger>,
    components: &BTreeMap<String, Component>,
) -> Result<HttpTrigger, ManifestError> {
    let position = cx.pos(&entry);
    let raw = entry.into_inner();

    let component = trigger_component(cx, "http", position, raw.component, components)?;

    let Some(route) = raw.route else {
        return Err(cx.err(
            position,
            format!("[[trigger.http]] for `{component}` has no `route`"),
            "add `route = \"/path\"` (or `route = { private = true }`)",
        ));
    };
    let route_position = cx.pos(&route);
    let route = match route.into_inner() {
        toml::Value::String(path) => {
            check_route(cx, route_position, &path)?;
            HttpRoute::Path(path)
        }
        toml::Value::Table(t) if t.get("private").and_then(|v| v.as_bool()) == Some(true) => {
            HttpRoute::Private
        }
        _ => {
            return Err(cx.err(
                route_position,
                "`route` must be a path string or `{ private = true }`",
                "write `route = \"/orders/...\"`",
            ));
        }
    };

    if let Some(executor) = raw.executor {
        let executor_position = cx.pos(&executor);
        let kind = executor
            .get_ref()
            .as_table()
            .and_then(|t| t.get("type"))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        match kind.as_deref() {
            Some("spin") | Some("http") => {}
            Some("wagi") => {
                return Err(cx.err(
                    executor_position,
                    "the WAGI executor is not supported by moa",
                    "build the component for wasi:http (spin-sdk or wit-bindgen) and remove `executor`",
                ));
            }
            _ => {
                return Err(cx.err(
                    executor_position,
                    "unknown `executor`",
                    "remove `executor` (the default runs wasi:http components) or write `executor = { type = \"spin\" }`",
                ));
            }
        }
    }

    Ok(HttpTrigger {
        route,
        component,
        position,
    })
}

fn check_route(cx: &Ctx, position: Position, route: &str) -> Result<(), ManifestError> {
    if !route.starts_with('/') {
        return Err(cx.err(
            position,
            format!("route `{route}` does not start with `/`"),
            format!("write `route = \"/{route}\"`"),
        ));
    }
    if let Some(idx) = route.find("...")
        && !(route.ends_with("/...") && idx == route.len() - 3)
    {
        return Err(cx.err(
            position,
            format!("route `{route}` uses `...` other than as its last segment"),
            "a wildcard route ends in `/...`, e.g. `/orders/...`",
        ));
    }
    Ok(())
}

fn check_duplicate_routes(cx: &Ctx, triggers: &[HttpTrigger]) -> Result<(), ManifestError> {
    let mut seen = BTreeSet::new();
    for trigger in triggers {
        if let HttpRoute::Path(route) = &trigger.route {
            let normalized = normalize_route(route);
            if !seen.insert(normalized.clone()) {
                return Err(cx.err(
                    trigger.position,
                    format!("route `{route}` is used by more than one trigger"),
                    "give each [[trigger.http]] its own route",
                ));
            }
        }
    }
    Ok(())
}

/// Trailing slashes do not distinguish routes: `/a/` and `/a` are the same route.
pub fn normalize_route(route: &str) -> String {
    let trimmed = route.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    }
}

#[cfg(test)]
mod tests {
    use crate::{ManifestError, parse};
    use std::path::Path;

    /// The keys the host's capabilities read, as the host passes them.
    const KEYS: &[&str] = &["key_value_stores", "ai_models", "allowed_publish_topics"];

    const GOOD: &str = r#"
spin_manifest_version = 2

[application]
name = "shop"

[variables]
greeting = { default = "hi" }
api_host = { required = true }

[[trigger.http]]
route = "/hello/..."
component = "hello"

[[trigger.http]]
route = { private = true }
component = "hello"

[component.hello]
source = "hello.wasm"
allowed_outbound_hosts = ["https://{{ api_host }}"]
key_value_stores = ["default"]
variables = { message = "{{ greeting }}, world" }
[component.hello.build]
command = "cargo build"
"#;

    fn err(text: &str) -> (usize, String) {
        match parse(Path::new("spin.toml"), text, KEYS) {
            Err(e @ ManifestError::Invalid { .. }) => {
                (e.position().map(|p| p.line).unwrap_or(0), e.to_string())
            }
            Err(e) => panic!("unexpected {e}"),
            Ok(_) => panic!("manifest was accepted"),
        }
    }

    #[test]
    fn a_complete_manifest_is_accepted() {
        let m = parse(Path::new("spin.toml"), GOOD, KEYS).unwrap();
        assert_eq!(m.name, "shop");
        assert_eq!(m.http_triggers.len(), 2);
        let hello = &m.components["hello"];
        let stores = hello
            .string_list(Path::new("spin.toml"), "key_value_stores")
            .unwrap();
        assert_eq!(stores[0].value, "default");
        assert_eq!(hello.variables["message"].value, "{{ greeting }}, world");
        assert_eq!(hello.build.as_ref().unwrap().commands, ["cargo build"]);
    }

    #[test]
    fn unknown_component_reference_names_line_and_choices() {
        let text = GOOD.replacen("component = \"hello\"", "component = \"helo\"", 1);
        let (line, msg) = err(&text);
        assert_eq!(line, 13);
        assert!(
            msg.contains("`helo`") && msg.contains("use one of: hello"),
            "{msg}"
        );
    }

    #[test]
    fn undeclared_variable_in_template_is_rejected() {
        let text = GOOD.replace("{{ greeting }}", "{{ greting }}");
        let (line, msg) = err(&text);
        assert_eq!(line, 23);
        assert!(
            msg.contains("greting") && msg.contains("[variables]"),
            "{msg}"
        );
    }

    #[test]
    fn event_triggers_are_parsed_with_defaults() {
        let text = format!(
            "{GOOD}\n[[trigger.kafka]]\ntopics = [\"orders\", \"payments\"]\ncomponent = \"hello\"\nmax_attempts = 3\n\n[[trigger.redis-stream]]\nstream = \"chat\"\ncomponent = \"hello\"\ngroup = \"ai\"\nclaim_idle_ms = 1000\n"
        );
        let m = parse(Path::new("spin.toml"), &text, KEYS).unwrap();
        assert_eq!(m.event_triggers.len(), 2);
        let kafka = m
            .event_triggers
            .iter()
            .find(|t| t.kind == crate::EventTriggerKind::Kafka)
            .unwrap();
        assert_eq!(kafka.topics, ["orders", "payments"]);
        assert_eq!(kafka.group, "shop-hello");
        assert_eq!((kafka.max_attempts, kafka.concurrency), (3, 8));
        assert_eq!(kafka.dead_letter_for("orders"), "orders.dlq");
        let redis = m
            .event_triggers
            .iter()
            .find(|t| t.kind == crate::EventTriggerKind::RedisStream)
            .unwrap();
        assert_eq!((redis.group.as_str(), redis.claim_idle_ms), ("ai", 1000));
        assert_eq!(redis.topics, ["chat"]);
    }

    #[test]
    fn event_trigger_mistakes_name_the_field() {
        let (line, msg) = err(&format!(
            "{GOOD}\n[[trigger.kafka]]\ntopic = \"orders\"\ncomponent = \"hello\"\n"
        ));
        assert_eq!(line, 27);
        assert!(
            msg.contains("unknown field `topic`") && msg.contains("topics = ["),
            "{msg}"
        );
        let (_, msg) = err(&format!(
            "{GOOD}\n[[trigger.redis-stream]]\nstream = \"a b\"\ncomponent = \"hello\"\n"
        ));
        assert!(msg.contains("invalid topic name `a b`"), "{msg}");
        let (_, msg) = err(&format!(
            "{GOOD}\n[[trigger.kafka]]\ntopics = [\"o\"]\ncomponent = \"hello\"\nmax_attempts = 0\n"
        ));
        assert!(msg.contains("`max_attempts` must be at least 1"), "{msg}");
        let (_, msg) = err(&format!(
            "{GOOD}\n[[trigger.kafka]]\ntopics = [\"o\"]\ncomponent = \"hello\"\ndead_letter_topic = \"o\"\n"
        ));
        assert!(msg.contains("also consumed"), "{msg}");
        let (_, msg) = err(&format!(
            "{GOOD}\n[[trigger.cron]]\ncomponent = \"hello\"\n"
        ));
        assert!(msg.contains("`cron` is not supported"), "{msg}");
    }

    #[test]
    fn syntax_errors_and_missing_fields_carry_positions() {
        let (line, msg) = err(
            "spin_manifest_version = 2\n[application]\nname = \"x\"\n[component.a]\nsourc = \"a.wasm\"\n",
        );
        assert_eq!(line, 5);
        assert!(msg.contains("unknown field `sourc`"), "{msg}");
        let (line, _) = err("spin_manifest_version = 2\n[application\n");
        assert_eq!(line, 2);
    }

    #[test]
    fn component_keys_are_core_keys_or_ones_a_capability_reads() {
        let text = GOOD.replace(
            "key_value_stores = [\"default\"]",
            "key_value_stores = [\"default\"]\nsqlite_databases = [\"default\"]",
        );
        let (line, msg) = err(&text);
        assert!(msg.contains("unknown field `sqlite_databases`"), "{msg}");
        assert!(msg.contains("key_value_stores"), "{msg}");
        assert!(line > 0);
        // The same key is accepted once a capability reads it.
        let mut keys = KEYS.to_vec();
        keys.push("sqlite_databases");
        let m = parse(Path::new("spin.toml"), &text, &keys).unwrap();
        let hello = &m.components["hello"];
        assert_eq!(
            hello
                .string_list(Path::new("spin.toml"), "sqlite_databases")
                .unwrap()[0]
                .value,
            "default"
        );
        // A setting of the wrong shape is an error naming the key.
        let text = GOOD.replace(
            "key_value_stores = [\"default\"]",
            "key_value_stores = \"default\"",
        );
        let m = parse(Path::new("spin.toml"), &text, KEYS).unwrap();
        let err = m.components["hello"]
            .string_list(Path::new("spin.toml"), "key_value_stores")
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be a list of strings"), "{err}");
    }

    #[test]
    fn version_one_and_bad_routes_are_rejected() {
        let (_, msg) =
            err(&GOOD.replace("spin_manifest_version = 2", "spin_manifest_version = \"1\""));
        assert!(msg.contains("version 2"), "{msg}");
        let (line, msg) = err(&GOOD.replace("/hello/...", "hello"));
        assert_eq!(line, 12);
        assert!(msg.contains("does not start with `/`"), "{msg}");
        let (_, msg) = err(&GOOD.replace("/hello/...", "/a/.../b"));
        assert!(msg.contains("last segment"), "{msg}");
    }
}
