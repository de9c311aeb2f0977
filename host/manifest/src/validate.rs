//! Turns the raw manifest into an [`AppManifest`], checking every cross-reference
//! (trigger -> component, template -> variable, routes) and reporting the first mistake with its line.

use crate::dependencies::*;
use crate::schema::*;
use crate::template::{Template, is_valid_variable_name};
use crate::{ManifestError, Position, UNSUPPORTED_TRIGGERS};
use std::collections::BTreeMap;
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
    host: crate::HostKeys<'_>,
) -> Result<AppManifest, ManifestError> {
    let trigger_kinds = host.trigger_kinds;
    let cx = Ctx { path, text };
    check_version(&cx, &raw)?;

    let application = raw.application.into_inner();

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
        let mut component =
            validate_component(&cx, id, component, &variables, host.component_keys)?;
        component.capability_settings = component_settings;
        components.insert(component.id.clone(), component);
    }
    resolve_component_dependencies(&cx, &mut components)?;

    let mut triggers = Vec::new();
    for (kind, entries) in raw.trigger {
        let kind_position = cx.pos(&kind);
        let kind = kind.into_inner();
        if !trigger_kinds.contains(&kind.as_str()) {
            let help = UNSUPPORTED_TRIGGERS
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, why)| why.to_string())
                .unwrap_or_else(|| {
                    let kinds: Vec<String> = trigger_kinds
                        .iter()
                        .map(|k| format!("`[[trigger.{k}]]`"))
                        .collect();
                    format!(
                        "moa runs {}; check the spelling of the trigger type",
                        kinds.join(", ")
                    )
                });
            let position = entries.first().map(|e| cx.pos(e)).unwrap_or(kind_position);
            return Err(cx.err(
                position,
                format!("trigger type `{kind}` is not supported by this version of moa"),
                help,
            ));
        }
        for entry in entries {
            let position = cx.pos(&entry);
            let mut component = None;
            let mut settings = BTreeMap::new();
            for (key, value) in entry.into_inner() {
                if key.get_ref() == "component" {
                    component = Some(value);
                    continue;
                }
                let value_position = cx.pos(&value);
                settings.insert(
                    key.into_inner(),
                    Located {
                        value: value.into_inner(),
                        position: value_position,
                    },
                );
            }
            let component = trigger_component(&cx, &kind, position, component, &components)?;
            triggers.push(TriggerEntry {
                kind: kind.clone(),
                component,
                position,
                settings,
            });
        }
    }

    Ok(AppManifest {
        name: application.name,
        version: application.version,
        description: application.description,
        authors: application.authors,
        trigger_settings: application.trigger,
        variables,
        triggers,
        components,
    })
}

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
    capability_keys: &[&str],
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
    let dependencies = component_dependencies(
        cx,
        &id,
        raw.dependencies,
        raw.dependencies_inherit_configuration,
        capability_keys,
    )?;

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
            if limits.memory_limit_mb == Some(0)
                || limits.request_timeout_ms == Some(0)
                || limits.max_instance_reuse == Some(0)
            {
                return Err(cx.err(
                    limits_position,
                    format!("component `{id}`: limits must be greater than zero"),
                    "remove the setting to use the host default, or give a positive number",
                ));
            }
            ComponentLimits {
                memory_limit_mb: limits.memory_limit_mb,
                request_timeout_ms: limits.request_timeout_ms,
                max_instance_reuse: limits.max_instance_reuse,
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
        dependencies,
        position,
    })
}

/// The grants a dependency can inherit, by manifest key: the core ones and every capability's.
const CORE_INHERITABLE_KEYS: &[&str] = &[
    "allowed_outbound_hosts",
    "environment",
    "files",
    "variables",
];

/// `[component.<id>.dependencies]` checked as Spin checks it: key syntax, one source per entry
/// (local `path` or in-app `component`), `export` only for interface keys, no two keys that could
/// satisfy the same import, and inheritance given either per dependency or for all, not both.
fn component_dependencies(
    cx: &Ctx,
    id: &str,
    raw: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    inherit_all: Option<Spanned<toml::Value>>,
    capability_keys: &[&str],
) -> Result<Vec<ComponentDependency>, ManifestError> {
    let inherit_all = match inherit_all {
        None => None,
        Some(value) => match value.get_ref() {
            toml::Value::Boolean(all) => Some((*all, cx.pos(&value))),
            _ => {
                return Err(cx.err(
                    cx.pos(&value),
                    format!("component `{id}`: `dependencies_inherit_configuration` must be true or false"),
                    "write `dependencies_inherit_configuration = true` to give every dependency this component's grants",
                ));
            }
        },
    };
    let mut dependencies: Vec<ComponentDependency> = Vec::new();
    for (key, value) in raw {
        let position = cx.pos(&key);
        let key = key.into_inner();
        let name = DependencyName::parse(&key).map_err(|why| {
            cx.err(
                position,
                format!("component `{id}`: invalid dependency name `{key}`: {why}"),
                "name the import the dependency satisfies: `\"namespace:package/interface@1.2.3\"`, `\"namespace:package\"` or a plain kebab-case import name",
            )
        })?;
        let value_position = cx.pos(&value);
        let dependency = component_dependency(
            cx,
            id,
            name,
            value.into_inner(),
            value_position,
            inherit_all,
            capability_keys,
        )?;
        if let Some(other) = dependencies
            .iter()
            .find(|other| other.name.overlaps(&dependency.name))
        {
            return Err(cx.err(
                position,
                format!(
                    "component `{id}`: dependencies `{other}` and `{key}` could satisfy the same import",
                    other = other.name
                ),
                "keep one of them, or name distinct interfaces or semver-incompatible versions",
            ));
        }
        dependencies.push(ComponentDependency {
            position,
            ..dependency
        });
    }
    Ok(dependencies)
}

fn component_dependency(
    cx: &Ctx,
    id: &str,
    name: DependencyName,
    value: toml::Value,
    position: Position,
    inherit_all: Option<(bool, Position)>,
    capability_keys: &[&str],
) -> Result<ComponentDependency, ManifestError> {
    let local_help = "write `{ path = \"deps/greeter.wasm\" }` for a local file, `{ component = \"<component id>\" }` for a component of this app, or `{ url = \"https://...\", digest = \"sha256:...\" }`";
    let table = match value {
        toml::Value::String(_) | toml::Value::Table(_)
            if value.as_str().is_some()
                || value.get("version").is_some()
                || value.get("registry").is_some() =>
        {
            return Err(cx.err(
                position,
                format!("component `{id}`: dependency `{name}` comes from a registry, which moa does not fetch yet"),
                format!("download the component (e.g. `wkg get`) and {local_help}"),
            ));
        }
        toml::Value::Table(table) => table,
        _ => {
            return Err(cx.err(
                position,
                format!("component `{id}`: dependency `{name}` must be a table"),
                local_help,
            ));
        }
    };
    const FIELDS: &[&str] = &[
        "path",
        "component",
        "url",
        "digest",
        "export",
        "inherit_configuration",
    ];
    if let Some(unknown) = table.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(cx.err(
            position,
            format!("component `{id}`: dependency `{name}` has unknown field `{unknown}`"),
            format!("a dependency takes: {}", FIELDS.join(", ")),
        ));
    }
    let string = |field: &str| -> Result<Option<String>, ManifestError> {
        match table.get(field) {
            None => Ok(None),
            Some(toml::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(cx.err(
                position,
                format!(
                    "component `{id}`: dependency `{name}`: `{field}` must be a non-empty string"
                ),
                local_help,
            )),
        }
    };
    let digest = string("digest")?;
    let source = match (string("path")?, string("component")?, string("url")?) {
        (Some(path), None, None) => DependencySource::Path(PathBuf::from(path)),
        (None, Some(component), None) => DependencySource::Component {
            id: component,
            source: PathBuf::new(),
        },
        (None, None, Some(url)) => {
            let Some(digest) = digest.clone() else {
                return Err(cx.err(
                    position,
                    format!("component `{id}`: dependency `{name}` has a `url` but no `digest`"),
                    "add `digest = \"sha256:<64 hex digits>\"` (e.g. from `sha256sum file.wasm`)",
                ));
            };
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(cx.err(
                    position,
                    format!("component `{id}`: dependency `{name}`: digest `{digest}` is not a sha256 digest"),
                    "write `digest = \"sha256:<64 hex digits>\"` (e.g. from `sha256sum file.wasm`)",
                ));
            }
            if !url.starts_with("https://") && !url.starts_with("http://") {
                return Err(cx.err(
                    position,
                    format!("component `{id}`: dependency `{name}`: `{url}` is not an http(s) URL"),
                    "write `url = \"https://example.com/greeter.wasm\"`",
                ));
            }
            DependencySource::Url {
                url,
                digest: digest.to_ascii_lowercase(),
            }
        }
        (None, None, None) => {
            return Err(cx.err(
                position,
                format!("component `{id}`: dependency `{name}` has no source"),
                local_help,
            ));
        }
        _ => {
            return Err(cx.err(
                position,
                format!("component `{id}`: dependency `{name}` has more than one of `path`, `component` and `url`"),
                "keep one source",
            ));
        }
    };
    if digest.is_some() && !matches!(source, DependencySource::Url { .. }) {
        return Err(cx.err(
            position,
            format!("component `{id}`: dependency `{name}`: `digest` goes with `url`"),
            "remove `digest`, or download from a `url`",
        ));
    }
    let export = string("export")?;
    if export.is_some() && name.is_package_level() {
        return Err(cx.err(
            position,
            format!("component `{id}`: dependency `{name}` names a whole package, so it cannot pick an `export`"),
            "name one interface in the key (`\"namespace:package/interface\"`) to use `export`",
        ));
    }
    let inherit = match (table.get("inherit_configuration"), inherit_all) {
        (Some(_), Some((_, all_position))) => {
            return Err(cx.err(
                all_position,
                format!("component `{id}` sets both `dependencies_inherit_configuration` and `inherit_configuration` on dependency `{name}`"),
                "these are exclusive: use one or the other",
            ));
        }
        (None, Some((true, _))) => InheritConfiguration::All,
        (None, _) | (Some(toml::Value::Boolean(false)), None) => {
            InheritConfiguration::Keys(Vec::new())
        }
        (Some(toml::Value::Boolean(true)), None) => InheritConfiguration::All,
        (Some(toml::Value::Array(items)), None) => {
            let mut keys = Vec::new();
            for item in items {
                let key = item.as_str().unwrap_or_default();
                if !CORE_INHERITABLE_KEYS.contains(&key) && !capability_keys.contains(&key) {
                    let mut known = CORE_INHERITABLE_KEYS.to_vec();
                    known.extend_from_slice(capability_keys);
                    return Err(cx.err(
                        position,
                        format!("component `{id}`: dependency `{name}` inherits `{item}`, which is not a grant"),
                        format!("inherit any of: {}", known.join(", ")),
                    ));
                }
                keys.push(key.to_string());
            }
            InheritConfiguration::Keys(keys)
        }
        (Some(_), None) => {
            return Err(cx.err(
                position,
                format!("component `{id}`: dependency `{name}`: `inherit_configuration` must be true, false or a list of keys"),
                "write `inherit_configuration = [\"key_value_stores\"]` or `true`",
            ));
        }
    };
    Ok(ComponentDependency {
        name,
        source,
        export,
        inherit,
        position,
    })
}

/// Resolves `{ component = "id" }` dependencies to that component's `source`. As in Spin, the
/// component must exist and have no grants or dependencies of its own: a dependency runs with
/// what its depender gives it.
fn resolve_component_dependencies(
    cx: &Ctx,
    components: &mut BTreeMap<String, Component>,
) -> Result<(), ManifestError> {
    let mut resolved = Vec::new();
    for (depender, component) in components.iter() {
        for (index, dependency) in component.dependencies.iter().enumerate() {
            let DependencySource::Component { id, .. } = &dependency.source else {
                continue;
            };
            let Some(target) = components.get(id) else {
                let known = components.keys().cloned().collect::<Vec<_>>().join(", ");
                return Err(cx.err(
                    dependency.position,
                    format!(
                        "component `{depender}`: dependency `{}` names component `{id}`, which is not defined",
                        dependency.name
                    ),
                    format!("add a [component.{id}] table, or use one of: {known}"),
                ));
            };
            let mut grants = Vec::new();
            if !target.allowed_outbound_hosts.is_empty() {
                grants.push("allowed_outbound_hosts".to_string());
            }
            if !target.variables.is_empty() {
                grants.push("variables".to_string());
            }
            if !target.environment.is_empty() {
                grants.push("environment".to_string());
            }
            if !target.files.is_empty() {
                grants.push("files".to_string());
            }
            if !target.dependencies.is_empty() {
                grants.push("dependencies".to_string());
            }
            if target.limits != ComponentLimits::default() {
                grants.push("moa".to_string());
            }
            grants.extend(target.capability_settings.keys().cloned());
            if id == depender {
                grants.push("itself as a dependency".to_string());
            }
            if !grants.is_empty() {
                return Err(cx.err(
                    dependency.position,
                    format!(
                        "component `{id}` cannot be used as a dependency of `{depender}` because it specifies: {}",
                        grants.join(", ")
                    ),
                    "dependencies may not have their own resources or permissions: move them to the depending component and use `inherit_configuration`",
                ));
            }
            resolved.push((depender.clone(), index, target.source.value.clone()));
        }
    }
    for (depender, index, source) in resolved {
        if let Some(DependencySource::Component { source: path, .. }) = components
            .get_mut(&depender)
            .and_then(|c| c.dependencies.get_mut(index))
            .map(|d| &mut d.source)
        {
            *path = source;
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use crate::{DependencySource, HostKeys, InheritConfiguration, ManifestError, parse};
    use std::path::Path;

    /// The keys the host's capabilities read and the triggers it runs, as the host passes them.
    const KEYS: &[&str] = &["key_value_stores", "ai_models", "allowed_publish_topics"];
    const HOST: HostKeys = HostKeys {
        component_keys: KEYS,
        trigger_kinds: &["http", "kafka", "redis-stream"],
    };

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
        match parse(Path::new("spin.toml"), text, HOST) {
            Err(e @ ManifestError::Invalid { .. }) => {
                (e.position().map(|p| p.line).unwrap_or(0), e.to_string())
            }
            Err(e) => panic!("unexpected {e}"),
            Ok(_) => panic!("manifest was accepted"),
        }
    }

    #[test]
    fn a_complete_manifest_is_accepted() {
        let m = parse(Path::new("spin.toml"), GOOD, HOST).unwrap();
        assert_eq!(m.name, "shop");
        assert_eq!(m.triggers_of("http").count(), 2);
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
    fn trigger_kinds_the_host_does_not_run_are_rejected() {
        let (_, msg) = err(&format!(
            "{GOOD}\n[[trigger.mqtt]]\ncomponent = \"hello\"\n"
        ));
        assert!(msg.contains("`mqtt` is not supported"), "{msg}");
        let (line, msg) = err(&format!(
            "{GOOD}\n[[trigger.kafak]]\ncomponent = \"hello\"\n"
        ));
        assert_eq!(line, 27);
        assert!(msg.contains("`[[trigger.kafka]]`"), "{msg}");
        // An entry of a kind the host runs keeps its settings for the host's trigger.
        let m = parse(
            Path::new("spin.toml"),
            &format!("{GOOD}\n[[trigger.kafka]]\ntopics = [\"o\"]\ncomponent = \"hello\"\n"),
            HOST,
        )
        .unwrap();
        let kafka = m.triggers_of("kafka").next().unwrap();
        assert_eq!(kafka.component, "hello");
        assert_eq!(kafka.position.line, 27);
        let topics = kafka
            .get::<Vec<String>>(Path::new("spin.toml"), "topics")
            .unwrap()
            .unwrap();
        assert_eq!(
            (topics.value, topics.position.line),
            (vec!["o".to_string()], 28)
        );
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
        let host = HostKeys {
            component_keys: &keys,
            ..HOST
        };
        let m = parse(Path::new("spin.toml"), &text, host).unwrap();
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
        let m = parse(Path::new("spin.toml"), &text, HOST).unwrap();
        let err = m.components["hello"]
            .string_list(Path::new("spin.toml"), "key_value_stores")
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be a list of strings"), "{err}");
    }

    #[test]
    fn version_one_is_rejected() {
        let (_, msg) =
            err(&GOOD.replace("spin_manifest_version = 2", "spin_manifest_version = \"1\""));
        assert!(msg.contains("version 2"), "{msg}");
    }

    /// GOOD plus a `greeter` component and `deps` as `hello`'s dependencies table body.
    fn with_dependencies(deps: &str, greeter: &str) -> String {
        format!(
            "{GOOD}\n[component.hello.dependencies]\n{deps}\n[component.greeter]\nsource = \"greeter.wasm\"\n{greeter}\n"
        )
    }

    #[test]
    fn dependencies_are_parsed_with_their_sources_and_inheritance() {
        let text = with_dependencies(
            "\"moa-test:greet/greeter@0.1.0\" = { component = \"greeter\", export = \"moa-test:greet/greeter@0.1.0\" }\n\"moa-test:other\" = { path = \"deps/other.wasm\", inherit_configuration = [\"key_value_stores\"] }\nplain-name = { path = \"p.wasm\", inherit_configuration = true }",
            "",
        );
        let m = parse(Path::new("spin.toml"), &text, HOST).unwrap();
        let deps = &m.components["hello"].dependencies;
        assert_eq!(deps.len(), 3);
        // Key order: `"moa-test:greet/..."` < `"moa-test:other"` < `plain-name`.
        assert_eq!(deps[0].name.to_string(), "moa-test:greet/greeter@0.1.0");
        assert_eq!(
            deps[0].source,
            DependencySource::Component {
                id: "greeter".into(),
                source: "greeter.wasm".into()
            }
        );
        assert_eq!(deps[0].inherit, InheritConfiguration::Keys(vec![]));
        assert_eq!(deps[0].position.line, 28);
        assert_eq!(
            deps[1].source.path().map(|p| p.as_path()),
            Some(Path::new("deps/other.wasm"))
        );
        assert!(deps[1].inherit.inherits("key_value_stores"));
        assert!(!deps[1].inherit.inherits("variables"));
        assert_eq!(deps[2].inherit, InheritConfiguration::All);
        // A dependency-only component is not triggered.
        assert!(m.triggered_components().all(|c| c.id != "greeter"));

        let text = with_dependencies("\"moa-test:greet\" = { path = \"g.wasm\" }", "").replace(
            "[component.hello.build]",
            "dependencies_inherit_configuration = true\n[component.hello.build]",
        );
        let m = parse(Path::new("spin.toml"), &text, HOST).unwrap();
        assert_eq!(
            m.components["hello"].dependencies[0].inherit,
            InheritConfiguration::All
        );
    }

    #[test]
    fn bad_dependencies_are_refused_with_their_line_and_fix() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "\"foo:bar\" = { path = \"a.wasm\", export = \"x\" }",
                "",
                "cannot pick an `export`",
            ),
            (
                "\"foo:bar@0.1.0\" = { path = \"a.wasm\" }\n\"foo:bar/baz@0.1.2\" = { path = \"b.wasm\" }",
                "",
                "could satisfy the same import",
            ),
            ("\"foo:bar\" = \">= 0.1.0\"", "", "registry"),
            ("\"foo:bar\" = { version = \"0.1.0\" }", "", "registry"),
            (
                "\"foo:bar\" = { url = \"https://x/a.wasm\", digest = \"sha256:00\" }",
                "",
                "is not a sha256 digest",
            ),
            (
                "\"foo:bar\" = { url = \"https://x/a.wasm\" }",
                "",
                "but no `digest`",
            ),
            (
                "\"foo:bar\" = { url = \"ftp://x/a.wasm\", digest = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\" }",
                "",
                "not an http(s) URL",
            ),
            (
                "\"foo:bar\" = { path = \"a.wasm\", digest = \"sha256:00\" }",
                "",
                "`digest` goes with `url`",
            ),
            (
                "\"foo:bar\" = { path = \"a.wasm\", component = \"greeter\" }",
                "",
                "more than one of `path`, `component` and `url`",
            ),
            ("\"foo:bar\" = { export = \"x\" }", "", "has no source"),
            (
                "\"foo:bar\" = { path = \"a.wasm\", sha = \"x\" }",
                "",
                "unknown field `sha`",
            ),
            (
                "\"foo:bar\" = { path = \"a.wasm\", inherit_configuration = [\"allowed_hosts\"] }",
                "",
                "not a grant",
            ),
            (
                "\"foo:bar\" = { component = \"nope\" }",
                "",
                "`nope`, which is not defined",
            ),
            (
                "\"foo:bar\" = { component = \"greeter\" }",
                "variables = { a = \"b\" }",
                "because it specifies: variables",
            ),
            (
                "\"foo:bar\" = { component = \"greeter\" }",
                "key_value_stores = [\"default\"]",
                "because it specifies: key_value_stores",
            ),
            (
                "\"foo:bar\" = { component = \"greeter\" }",
                "allowed_outbound_hosts = [\"https://x.com\"]",
                "because it specifies: allowed_outbound_hosts",
            ),
            (
                "\"Foo:bar\" = { path = \"a.wasm\" }",
                "",
                "invalid dependency name",
            ),
            (
                "\"foo:bar\" = { path = \"a.wasm\", inherit_configuration = \"yes\" }",
                "",
                "must be true, false or a list",
            ),
        ];
        for (deps, greeter, expected) in cases {
            let (line, msg) = err(&with_dependencies(deps, greeter));
            assert!(msg.contains(expected), "{deps}: {msg}");
            assert!(line >= 28, "{deps}: line {line}");
        }
        let text = with_dependencies(
            "\"foo:bar\" = { path = \"a.wasm\", inherit_configuration = true }",
            "",
        )
        .replace(
            "[component.hello.build]",
            "dependencies_inherit_configuration = true\n[component.hello.build]",
        );
        let (_, msg) = err(&text);
        assert!(msg.contains("exclusive"), "{msg}");
    }
}
