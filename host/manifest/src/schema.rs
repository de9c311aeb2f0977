//! The manifest's shape: raw serde types that keep source spans, and the validated types
//! the host consumes.

use crate::Position;
use crate::dependencies::ComponentDependency;
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
    pub trigger: BTreeMap<Spanned<String>, Vec<Spanned<RawTriggerEntry>>>,
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

/// One `[[trigger.<kind>]]` entry as written: its keys with their spans.
pub(crate) type RawTriggerEntry = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

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
    #[serde(default)]
    pub dependencies: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    pub dependencies_inherit_configuration: Option<Spanned<toml::Value>>,
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
    pub max_instance_reuse: Option<u64>,
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
    /// `[application.trigger.<kind>]` tables (e.g. the HTTP trigger's `base`), for the host's triggers.
    pub trigger_settings: BTreeMap<String, toml::Table>,
    pub variables: BTreeMap<String, VariableDecl>,
    /// Every `[[trigger.<kind>]]` entry, in file order per kind; the host's trigger of that kind
    /// reads its settings.
    pub triggers: Vec<TriggerEntry>,
    pub components: BTreeMap<String, Component>,
}

/// An application variable from `[variables]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableDecl {
    pub default: Option<String>,
    pub required: bool,
    pub secret: bool,
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
    /// `[component.<id>.dependencies]`, in key order: composed into the component at load.
    pub dependencies: Vec<ComponentDependency>,
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
    /// Invocations one instance may serve in a row (`[limits] max_instance_reuse` by default).
    pub max_instance_reuse: Option<u64>,
}

impl AppManifest {
    /// The components named by at least one trigger, as its component or as one of its trigger
    /// dependencies (`dependencies.middleware = [{ component = "auth" }]`), in id order.
    pub fn triggered_components(&self) -> impl Iterator<Item = &Component> {
        self.components.values().filter(|c| {
            self.triggers
                .iter()
                .any(|t| t.component == c.id || t.dependency_components().any(|d| d == c.id))
        })
    }

    /// The entries of `[[trigger.<kind>]]`, in file order.
    pub fn triggers_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a TriggerEntry> {
        self.triggers.iter().filter(move |t| t.kind == kind)
    }
}

/// One `[[trigger.<kind>]]` entry. The manifest checks that the kind is one the host runs and that
/// `component` names a declared component; the host's trigger of that kind reads the settings.
#[derive(Debug, Clone)]
pub struct TriggerEntry {
    pub kind: String,
    pub component: String,
    /// Where the entry starts.
    pub position: Position,
    /// Every key but `component`, as written.
    pub settings: BTreeMap<String, Located<toml::Value>>,
}

impl TriggerEntry {
    /// An error at `position` in `manifest`, for the trigger that reads this entry.
    pub fn error(
        &self,
        manifest: &std::path::Path,
        position: Position,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> crate::ManifestError {
        crate::ManifestError::Invalid {
            path: manifest.to_path_buf(),
            position: Some(position),
            message: message.into(),
            help: help.into(),
        }
    }

    /// Rejects keys not in `allowed`; `hint` may give a better help for a given unknown key.
    /// The app components named in this trigger's `dependencies` table (`{ component = "id" }`
    /// entries of any list in it); the trigger kind checks the table itself.
    pub fn dependency_components(&self) -> impl Iterator<Item = &str> {
        self.settings
            .get("dependencies")
            .and_then(|d| d.value.as_table())
            .into_iter()
            .flat_map(|table| table.values())
            .filter_map(|list| list.as_array())
            .flatten()
            .filter_map(|entry| entry.get("component")?.as_str())
    }

    pub fn check_fields(
        &self,
        manifest: &std::path::Path,
        allowed: &[&str],
        hint: impl Fn(&str) -> Option<String>,
    ) -> Result<(), crate::ManifestError> {
        if let Some((unknown, setting)) = self
            .settings
            .iter()
            .find(|(key, _)| !allowed.contains(&key.as_str()))
        {
            let mut fields = vec!["component"];
            fields.extend_from_slice(allowed);
            return Err(self.error(
                manifest,
                setting.position,
                format!("[[trigger.{}]] has unknown field `{unknown}`", self.kind),
                hint(unknown).unwrap_or_else(|| {
                    format!("[[trigger.{}]] takes: {}", self.kind, fields.join(", "))
                }),
            ));
        }
        Ok(())
    }

    /// The setting `key` as a `T` (absent: `None`); a value of the wrong type is an error naming
    /// the key and the line.
    pub fn get<T: serde::de::DeserializeOwned>(
        &self,
        manifest: &std::path::Path,
        key: &str,
    ) -> Result<Option<Located<T>>, crate::ManifestError> {
        let Some(setting) = self.settings.get(key) else {
            return Ok(None);
        };
        let value = setting.value.clone().try_into::<T>().map_err(|err| {
            self.error(
                manifest,
                setting.position,
                format!(
                    "[[trigger.{}]] `{key}`: {}",
                    self.kind,
                    err.message().trim()
                ),
                "see docs/manifest.md for the fields of each trigger",
            )
        })?;
        Ok(Some(Located {
            value,
            position: setting.position,
        }))
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
    "dependencies_inherit_configuration",
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
