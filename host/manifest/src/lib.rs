//! Parses and validates `spin.toml` (Spin manifest version 2) into a typed [`AppManifest`].
//! Every mistake becomes a [`ManifestError`] naming the file, the line and the fix.

mod dependencies;
mod error;
mod schema;
pub mod template;
mod validate;

pub use dependencies::*;
pub use error::{ManifestError, Position};
pub use schema::*;

use std::path::{Path, PathBuf};

/// Trigger types the manifest format knows of that this version of moa cannot run yet,
/// with the reason shown to the user.
pub const UNSUPPORTED_TRIGGERS: &[(&str, &str)] = &[
    (
        "mqtt",
        "Spin's MQTT trigger (the spin-trigger-mqtt plugin) is not supported by moa; subscribe through a [[trigger.kafka]] or [[trigger.redis-stream]] bridge instead",
    ),
    (
        "sqs",
        "Spin's SQS trigger (the spin-trigger-sqs plugin) is not supported by moa; use [[trigger.kafka]]",
    ),
];

/// A manifest file read from disk, with the directory its relative paths resolve against.
#[derive(Debug, Clone)]
pub struct LoadedManifest {
    /// Path of the manifest file as given.
    pub path: PathBuf,
    /// Directory holding the manifest; `source`, `files` and `build.workdir` are relative to it.
    pub base_dir: PathBuf,
    /// The validated manifest.
    pub manifest: AppManifest,
}

/// What the host reads beyond the manifest's core: the `[component.<id>]` keys its capabilities
/// read and the `[[trigger.<kind>]]` kinds its triggers run. Anything else is an error.
#[derive(Debug, Clone, Copy)]
pub struct HostKeys<'a> {
    pub component_keys: &'a [&'a str],
    pub trigger_kinds: &'a [&'a str],
}

/// Reads and validates the manifest at `path`.
pub fn load(path: &Path, host: HostKeys<'_>) -> Result<LoadedManifest, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|err| ManifestError::Read {
        path: path.to_path_buf(),
        source: err,
    })?;
    let manifest = parse(path, &text, host)?;
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(LoadedManifest {
        path: path.to_path_buf(),
        base_dir,
        manifest,
    })
}

/// Parses and validates manifest text; `path` is used only in error messages.
pub fn parse(path: &Path, text: &str, host: HostKeys<'_>) -> Result<AppManifest, ManifestError> {
    let settings = validate::capability_settings(path, text, host.component_keys)?;
    let raw: schema::RawManifest = toml::from_str(text).map_err(|err| {
        let position = err
            .span()
            .map(|span| Position::from_offset(text, span.start));
        ManifestError::Invalid {
            path: path.to_path_buf(),
            position,
            message: err.message().trim().to_string(),
            help: help_for_serde_message(err.message()),
        }
    })?;
    validate::validate(path, text, raw, settings, host)
}

fn help_for_serde_message(message: &str) -> String {
    if message.contains("spin_manifest_version") {
        "start the file with `spin_manifest_version = 2`".into()
    } else if message.contains("missing field `source`") {
        "every [component.<id>] needs `source = \"path/to/component.wasm\"`".into()
    } else if message.contains("missing field `route`") {
        "every [[trigger.http]] needs `route = \"/path\"` (or `route = { private = true }`)".into()
    } else if message.contains("missing field `component`") {
        "every trigger needs `component = \"<component id>\"`".into()
    } else if message.contains("unknown field") {
        "remove or rename the field; see docs/manifest.md for the fields moa reads".into()
    } else {
        "see docs/manifest.md for the spin.toml format moa reads".into()
    }
}
