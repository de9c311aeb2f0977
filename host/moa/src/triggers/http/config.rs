//! The HTTP trigger's part of spin.toml: `[[trigger.http]]` entries (`route`, `executor`) and
//! `[application.trigger.http] base`, checked at load with errors that name the line and the fix.

use moa_manifest::{LoadedManifest, ManifestError, Position, TriggerEntry};
use std::collections::BTreeSet;

/// Where an HTTP trigger listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpRoute {
    /// A route pattern: an exact path, or a prefix ending in `/...`.
    Path(String),
    /// `route = { private = true }`: reachable only from other components, never from outside.
    Private,
}

/// One checked `[[trigger.http]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTriggerConfig {
    pub route: HttpRoute,
    pub component: String,
    pub position: Position,
}

/// Every `[[trigger.http]]` entry of the app, and the base path they are served under.
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    pub base: String,
    pub triggers: Vec<HttpTriggerConfig>,
}

impl HttpConfig {
    /// Reads and checks the app's HTTP triggers.
    pub fn from_manifest(app: &LoadedManifest) -> Result<Self, ManifestError> {
        let base = app
            .manifest
            .trigger_settings
            .get("http")
            .and_then(|t| t.get("base"))
            .and_then(|b| b.as_str())
            .unwrap_or("/")
            .to_string();
        let mut triggers = Vec::new();
        for entry in app.manifest.triggers_of("http") {
            triggers.push(entry_config(app, entry)?);
        }
        check_duplicate_routes(app, &triggers)?;
        Ok(HttpConfig { base, triggers })
    }
}

fn entry_config(
    app: &LoadedManifest,
    entry: &TriggerEntry,
) -> Result<HttpTriggerConfig, ManifestError> {
    let path = &app.path;
    entry.check_fields(path, &["route", "executor"], |_| None)?;
    let component = entry.component.clone();
    let Some(route) = entry.get::<toml::Value>(path, "route")? else {
        return Err(entry.error(
            path,
            entry.position,
            format!("[[trigger.http]] for `{component}` has no `route`"),
            "add `route = \"/path\"` (or `route = { private = true }`)",
        ));
    };
    let route = match route.value {
        toml::Value::String(text) => {
            check_route(app, entry, route.position, &text)?;
            HttpRoute::Path(text)
        }
        toml::Value::Table(t) if t.get("private").and_then(|v| v.as_bool()) == Some(true) => {
            HttpRoute::Private
        }
        _ => {
            return Err(entry.error(
                path,
                route.position,
                "`route` must be a path string or `{ private = true }`",
                "write `route = \"/orders/...\"`",
            ));
        }
    };
    if let Some(executor) = entry.get::<toml::Value>(path, "executor")? {
        let kind = executor
            .value
            .as_table()
            .and_then(|t| t.get("type"))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        match kind.as_deref() {
            Some("spin") | Some("http") => {}
            Some("wagi") => {
                return Err(entry.error(
                    path,
                    executor.position,
                    "the WAGI executor is not supported by moa",
                    "build the component for wasi:http (spin-sdk or wit-bindgen) and remove `executor`",
                ));
            }
            _ => {
                return Err(entry.error(
                    path,
                    executor.position,
                    "unknown `executor`",
                    "remove `executor` (the default runs wasi:http components) or write `executor = { type = \"spin\" }`",
                ));
            }
        }
    }
    Ok(HttpTriggerConfig {
        route,
        component,
        position: entry.position,
    })
}

fn check_route(
    app: &LoadedManifest,
    entry: &TriggerEntry,
    position: Position,
    route: &str,
) -> Result<(), ManifestError> {
    if !route.starts_with('/') {
        return Err(entry.error(
            &app.path,
            position,
            format!("route `{route}` does not start with `/`"),
            format!("write `route = \"/{route}\"`"),
        ));
    }
    if let Some(idx) = route.find("...")
        && !(route.ends_with("/...") && idx == route.len() - 3)
    {
        return Err(entry.error(
            &app.path,
            position,
            format!("route `{route}` uses `...` other than as its last segment"),
            "a wildcard route ends in `/...`, e.g. `/orders/...`",
        ));
    }
    Ok(())
}

fn check_duplicate_routes(
    app: &LoadedManifest,
    triggers: &[HttpTriggerConfig],
) -> Result<(), ManifestError> {
    let mut seen = BTreeSet::new();
    for trigger in triggers {
        if let HttpRoute::Path(route) = &trigger.route
            && !seen.insert(normalize_route(route))
        {
            return Err(ManifestError::Invalid {
                path: app.path.clone(),
                position: Some(trigger.position),
                message: format!("route `{route}` is used by more than one trigger"),
                help: "give each [[trigger.http]] its own route".into(),
            });
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
    use super::*;
    use std::path::Path;

    pub(crate) fn load(text: &str) -> Result<HttpConfig, ManifestError> {
        let manifest = moa_manifest::parse(
            Path::new("spin.toml"),
            text,
            moa_manifest::HostKeys {
                component_keys: &[],
                trigger_kinds: &["http"],
            },
        )?;
        HttpConfig::from_manifest(&LoadedManifest {
            path: "spin.toml".into(),
            base_dir: ".".into(),
            manifest,
        })
    }

    const APP: &str = "spin_manifest_version = 2\n[application]\nname = \"x\"\n[application.trigger.http]\nbase = \"/api\"\n[component.a]\nsource = \"a.wasm\"\n";

    fn with(trigger: &str) -> String {
        format!("{APP}[[trigger.http]]\n{trigger}\ncomponent = \"a\"\n")
    }

    #[test]
    fn routes_private_routes_and_the_base_are_read() {
        let config = load(&format!(
            "{}[[trigger.http]]\nroute = {{ private = true }}\ncomponent = \"a\"\n",
            with("route = \"/orders/...\"")
        ))
        .unwrap();
        assert_eq!(config.base, "/api");
        assert_eq!(
            config.triggers[0].route,
            HttpRoute::Path("/orders/...".into())
        );
        assert_eq!(config.triggers[1].route, HttpRoute::Private);
    }

    #[test]
    fn bad_routes_name_the_line_and_the_fix() {
        let err = load(&with("route = \"hello\"")).unwrap_err();
        assert_eq!(err.position().map(|p| p.line), Some(9));
        assert!(err.to_string().contains("does not start with `/`"), "{err}");
        let err = load(&with("route = \"/a/.../b\"")).unwrap_err();
        assert!(err.to_string().contains("last segment"), "{err}");
        let err = load(&with("rout = \"/a\"")).unwrap_err();
        assert!(err.to_string().contains("unknown field `rout`"), "{err}");
        let err = load(&with("route = \"/a\"\nexecutor = { type = \"wagi\" }")).unwrap_err();
        assert!(err.to_string().contains("WAGI"), "{err}");
        let twice = format!(
            "{}[[trigger.http]]\nroute = \"/a/\"\ncomponent = \"a\"\n",
            with("route = \"/a\"")
        );
        let err = load(&twice).unwrap_err();
        assert!(err.to_string().contains("more than one trigger"), "{err}");
    }
}
