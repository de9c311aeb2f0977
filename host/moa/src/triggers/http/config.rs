//! The HTTP trigger's part of spin.toml: `[[trigger.http]]` entries (`route`, `executor`,
//! `dependencies.middleware`) and `[application.trigger.http] base`, checked at load with errors
//! that name the line and the fix.

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
    /// Middleware components in front of `component`, outermost first (Spin's
    /// `dependencies.middleware = [{ component = "auth" }]`).
    pub middleware: Vec<String>,
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
    entry.check_fields(path, &["route", "executor", "dependencies"], |_| None)?;
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
    let middleware = middleware(app, entry)?;
    Ok(HttpTriggerConfig {
        route,
        component,
        middleware,
        position: entry.position,
    })
}

/// `dependencies.middleware = [{ component = "auth" }, ...]`: app components that each get the
/// request first and pass it on with `wasi:http/handler` (spin-sdk's `http::next`).
fn middleware(app: &LoadedManifest, entry: &TriggerEntry) -> Result<Vec<String>, ManifestError> {
    let path = &app.path;
    let Some(dependencies) = entry.get::<toml::Table>(path, "dependencies")? else {
        return Ok(Vec::new());
    };
    let position = dependencies.position;
    let fail = |message: String, help: &str| Err(entry.error(path, position, message, help));
    let mut chain = Vec::new();
    for (key, value) in &dependencies.value {
        if key != "middleware" {
            return fail(
                format!("unknown trigger dependency `{key}`"),
                "the HTTP trigger's only trigger dependency is `middleware`",
            );
        }
        let Some(list) = value.as_array() else {
            return fail(
                "`dependencies.middleware` must be a list".into(),
                "write `dependencies.middleware = [{ component = \"auth\" }]`",
            );
        };
        for item in list {
            let Some(table) = item.as_table() else {
                return fail(
                    "each middleware entry must be a table".into(),
                    "write `{ component = \"auth\" }`",
                );
            };
            if table.contains_key("inherit_configuration") {
                return fail(
                    "`inherit_configuration` is not supported: in moa a middleware component runs as its own instance with its own grants".into(),
                    "remove it and grant what the middleware needs (allowed_outbound_hosts, variables, ...) in its own [component.<id>]",
                );
            }
            let Some(component) = table.get("component").and_then(|c| c.as_str()) else {
                let kind = ["path", "url", "package"]
                    .into_iter()
                    .find(|k| table.contains_key(*k))
                    .unwrap_or("this");
                return fail(
                    format!(
                        "a `{kind}` middleware entry is not supported; only app components are"
                    ),
                    "declare the middleware as a component ([component.auth] source = \"...\") and write `{ component = \"auth\" }`",
                );
            };
            if !app.manifest.components.contains_key(component) {
                return fail(
                    format!("middleware component `{component}` is not declared"),
                    "add a [component.<id>] section for it, or fix the name",
                );
            }
            if component == entry.component || chain.iter().any(|c| c == component) {
                return fail(
                    format!("component `{component}` appears twice in this trigger's chain"),
                    "list each middleware once, and not the trigger's own component",
                );
            }
            chain.push(component.to_string());
        }
    }
    Ok(chain)
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

    #[test]
    fn middleware_chains_are_read_and_bad_ones_refused() {
        let app = format!(
            "{APP}[component.auth]\nsource = \"auth.wasm\"\n[component.log]\nsource = \"log.wasm\"\n"
        );
        let with_chain = |chain: &str| {
            format!(
                "{app}[[trigger.http]]\nroute = \"/a/...\"\ncomponent = \"a\"\ndependencies.middleware = {chain}\n"
            )
        };
        let config = load(&with_chain(
            "[{ component = \"log\" }, { component = \"auth\" }]",
        ))
        .unwrap();
        assert_eq!(config.triggers[0].middleware, ["log", "auth"]);
        let refused = [
            ("[{ component = \"nope\" }]", "`nope` is not declared"),
            ("[{ component = \"a\" }]", "appears twice"),
            (
                "[{ path = \"m.wasm\" }]",
                "`path` middleware entry is not supported",
            ),
            (
                "[{ component = \"auth\", inherit_configuration = true }]",
                "`inherit_configuration` is not supported",
            ),
            ("{ component = \"auth\" }", "must be a list"),
        ];
        for (chain, message) in refused {
            let err = load(&with_chain(chain)).unwrap_err();
            assert!(err.to_string().contains(message), "{chain}: {err}");
        }
        let other = format!(
            "{app}[[trigger.http]]\nroute = \"/a/...\"\ncomponent = \"a\"\ndependencies.tracing = []\n"
        );
        let err = load(&other).unwrap_err();
        assert!(
            err.to_string()
                .contains("only trigger dependency is `middleware`"),
            "{err}"
        );
    }
}
