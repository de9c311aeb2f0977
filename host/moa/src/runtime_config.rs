//! The runtime config file (`--runtime-config-file`, TOML, Spin's layout where Spin has one):
//! maps capability labels to backends and sets host limits. Each capability reads its own section.

use anyhow::{Context as _, Result, bail};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// A parsed runtime config; empty when no file was given (every capability then uses its
/// embedded default).
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    path: Option<PathBuf>,
    table: toml::Table,
}

impl RuntimeConfig {
    /// Reads `path` (its tables are checked against the ones moa understands by
    /// [`Self::check_sections`] when the app loads).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read runtime config {}: check the path given to --runtime-config-file",
                path.display()
            )
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let table: toml::Table = toml::from_str(text).map_err(|err| {
            let position = err
                .span()
                .map(|s| moa_manifest::Position::from_offset(text, s.start).to_string())
                .unwrap_or_default();
            anyhow::anyhow!(
                "{}:{position}: {}\n  help: the runtime config is TOML; see docs/runtime-config.md",
                path.display(),
                err.message().trim()
            )
        })?;
        Ok(RuntimeConfig {
            path: Some(path.to_path_buf()),
            table,
        })
    }

    /// Rejects top-level tables nobody reads, so that a typo is not silently ignored. `known`
    /// comes from the host core and the registered capabilities.
    pub fn check_sections(&self, known: &[&str]) -> Result<()> {
        for key in self.table.keys() {
            if !known.contains(&key.as_str()) {
                bail!(
                    "{}: unknown table `{key}`\n  help: the runtime config understands: {}",
                    self.describe(),
                    known.join(", ")
                );
            }
        }
        Ok(())
    }

    /// The directory relative paths in the file resolve against (the file's directory).
    pub fn base_dir(&self) -> Option<&Path> {
        self.path.as_deref().and_then(Path::parent)
    }

    /// Deserializes the `[key]` section, if present; errors name the file and the section.
    pub fn section<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let Some(value) = self.table.get(key) else {
            return Ok(None);
        };
        let parsed = value.clone().try_into::<T>().map_err(|err| {
            anyhow::anyhow!(
                "{}: invalid [{key}] section: {}\n  help: see docs/runtime-config.md for the keys of [{key}]",
                self.describe(),
                err.message().trim()
            )
        })?;
        Ok(Some(parsed))
    }

    /// How to name this config in messages.
    pub fn describe(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "runtime config".into(),
        }
    }
}

/// Resolves a value that may be written as a literal or as `{ env = "NAME" }`, so that secrets
/// stay out of the file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum ValueSource {
    Literal(String),
    Env { env: String },
}

impl ValueSource {
    pub fn resolve(&self, what: &str) -> Result<String> {
        match self {
            ValueSource::Literal(v) => Ok(v.clone()),
            ValueSource::Env { env } => std::env::var(env).with_context(|| {
                format!("{what} refers to environment variable {env}, which is not set: export {env}=...")
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Limits {
        memory_limit_mb: u64,
    }

    #[test]
    fn unknown_sections_and_bad_keys_are_named() {
        let err = RuntimeConfig::parse(Path::new("rc.toml"), "[key_valu_store.x]\ntype='spin'\n")
            .unwrap()
            .check_sections(&["key_value_store", "limits"])
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown table `key_valu_store`"),
            "{err}"
        );
        let rc = RuntimeConfig::parse(Path::new("rc.toml"), "[limits]\nmemory_limit_mb = 'big'\n")
            .unwrap();
        let err = rc.section::<Limits>("limits").unwrap_err();
        assert!(err.to_string().contains("[limits]"), "{err}");
        let rc =
            RuntimeConfig::parse(Path::new("rc.toml"), "[limits]\nmemory_limit_mb = 64\n").unwrap();
        assert_eq!(
            rc.section::<Limits>("limits")
                .unwrap()
                .unwrap()
                .memory_limit_mb,
            64
        );
    }
}
