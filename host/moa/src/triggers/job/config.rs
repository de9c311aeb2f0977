//! The job trigger's part of spin.toml: `[[trigger.job]]` entries (a named batch job: its chunk
//! processor component, its source, the documents store of its repository, chunking and fault
//! tolerance), checked at load.

use moa_manifest::{LoadedManifest, ManifestError, Position};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a job's records come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// A JSON Lines file (`.gz` read through gzip); one record per non-empty line. The path may
    /// hold `${name}` parameters; relative paths are from the manifest's directory.
    JsonLines { path: String },
}

/// One `[[trigger.job]]` entry.
#[derive(Debug, Clone)]
pub struct JobTrigger {
    pub name: String,
    pub component: String,
    pub source: SourceSpec,
    /// The documents store holding the job repository and the chunk transactions.
    pub store: String,
    pub chunk_size: usize,
    /// Chunks per claimed range (the unit hosts split a job by).
    pub range_chunks: usize,
    /// Chunks in flight per host.
    pub workers: usize,
    /// Skipped records past this fail the execution.
    pub skip_limit: u64,
    /// Attempts for a chunk that fails transiently.
    pub retry_limit: u32,
    /// How long a claimed range is a host's without a committed chunk.
    pub lease: Duration,
    /// Default parameters (`--param` overrides).
    pub parameters: BTreeMap<String, String>,
    pub position: Position,
}

impl JobTrigger {
    /// The source path with `${name}` replaced from `parameters`, relative to `base_dir`.
    pub fn source_path(
        &self,
        base_dir: &Path,
        parameters: &BTreeMap<String, String>,
    ) -> anyhow::Result<PathBuf> {
        let SourceSpec::JsonLines { path } = &self.source;
        let resolved = substitute(path, parameters).map_err(|missing| {
            anyhow::anyhow!(
                "job `{}`: its source path `{path}` needs parameter `{missing}`\n  help: run `moa job run {} --param {missing}=<value>`, or give it in the trigger's `parameters`",
                self.name,
                self.name
            )
        })?;
        let path = PathBuf::from(resolved);
        Ok(if path.is_relative() {
            base_dir.join(path)
        } else {
            path
        })
    }
}

/// Replaces every `${name}` in `text`; `Err(name)` for the first one `values` lacks.
pub fn substitute(text: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        out.push_str(values.get(name).ok_or_else(|| name.to_string())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

const FIELDS: &[&str] = &[
    "name",
    "source",
    "store",
    "chunk_size",
    "range_chunks",
    "workers",
    "skip_limit",
    "retry_limit",
    "lease_ms",
    "parameters",
];

/// Every job trigger entry of the app, checked.
pub fn from_manifest(app: &LoadedManifest) -> Result<Vec<JobTrigger>, ManifestError> {
    let path = &app.path;
    let mut jobs: Vec<JobTrigger> = Vec::new();
    for entry in app.manifest.triggers_of("job") {
        entry.check_fields(path, FIELDS, |unknown| {
            (unknown == "commit_interval")
                .then(|| "write `chunk_size = 256` (records per chunk)".to_string())
        })?;
        let number = |key: &str, default: u64, min: u64, max: u64| -> Result<u64, ManifestError> {
            match entry.get::<i64>(path, key)? {
                None => Ok(default),
                Some(v) if v.value >= min as i64 && v.value <= max as i64 => Ok(v.value as u64),
                Some(v) => Err(entry.error(
                    path,
                    v.position,
                    format!("[[trigger.job]] `{key} = {}` is out of range", v.value),
                    format!("use {min} to {max}"),
                )),
            }
        };
        let name = entry
            .get::<String>(path, "name")?
            .map(|n| n.value)
            .unwrap_or_else(|| entry.component.clone());
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(entry.error(
                path,
                entry.position,
                format!("[[trigger.job]] name `{name}` is not a job name"),
                "use letters, digits, `-` and `_`",
            ));
        }
        if jobs.iter().any(|j| j.name == name) {
            return Err(entry.error(
                path,
                entry.position,
                format!("two [[trigger.job]] entries are named `{name}`"),
                "give each job its own `name`",
            ));
        }
        let source = match entry.get::<toml::Table>(path, "source")? {
            None => {
                return Err(entry.error(
                    path,
                    entry.position,
                    format!("[[trigger.job]] `{name}` has no `source`"),
                    "add `source = { type = \"jsonl\", path = \"${input}\" }` (a JSON Lines file, .gz allowed)",
                ));
            }
            Some(table) => {
                let kind = table.value.get("type").and_then(toml::Value::as_str);
                let file = table.value.get("path").and_then(toml::Value::as_str);
                let unknown = table.value.keys().find(|k| *k != "type" && *k != "path");
                match (kind, file, unknown) {
                    (Some("jsonl"), Some(file), None) => SourceSpec::JsonLines {
                        path: file.to_string(),
                    },
                    _ => {
                        return Err(entry.error(
                            path,
                            table.position,
                            format!("[[trigger.job]] `{name}`: `source` is not a source moa reads"),
                            "write `source = { type = \"jsonl\", path = \"data/reviews.jsonl.gz\" }`; the path may use ${param}",
                        ));
                    }
                }
            }
        };
        let parameters = match entry.get::<BTreeMap<String, toml::Value>>(path, "parameters")? {
            None => BTreeMap::new(),
            Some(table) => table
                .value
                .into_iter()
                .map(|(k, v)| {
                    let text = match v {
                        toml::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, text)
                })
                .collect(),
        };
        jobs.push(JobTrigger {
            component: entry.component.clone(),
            source,
            store: entry
                .get::<String>(path, "store")?
                .map(|s| s.value)
                .unwrap_or_else(|| "default".into()),
            chunk_size: number("chunk_size", 256, 1, 10_000)? as usize,
            range_chunks: number("range_chunks", 16, 1, 100_000)? as usize,
            workers: number("workers", 4, 1, 64)? as usize,
            skip_limit: number("skip_limit", 0, 0, u32::MAX as u64)?,
            retry_limit: number("retry_limit", 3, 0, 100)? as u32,
            lease: Duration::from_millis(number("lease_ms", 60_000, 1_000, 3_600_000)?),
            parameters,
            position: entry.position,
            name,
        });
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_fill_the_source_path() {
        let values: BTreeMap<String, String> =
            [("input".to_string(), "data/r.jsonl.gz".to_string())].into();
        assert_eq!(
            substitute("${input}", &values),
            Ok("data/r.jsonl.gz".into())
        );
        assert_eq!(
            substitute("a/${input}/b", &values),
            Ok("a/data/r.jsonl.gz/b".into())
        );
        assert_eq!(substitute("plain.jsonl", &values), Ok("plain.jsonl".into()));
        assert_eq!(substitute("${missing}", &values), Err("missing".into()));
    }
}
