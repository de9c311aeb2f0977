//! Variables capability: `spin:variables/variables@3.0.0`, Spin 2's synchronous
//! `fermyon:spin/variables@2.0.0` and `wasi:config/store`. Application variables resolve once at load from env
//! (`MOA_VARIABLE_*`, `SPIN_VARIABLE_*`), the app directory's `.env` file (the same names, as Spin's
//! environment provider reads it), the runtime config `[variables]`, then defaults.

use crate::capabilities::{
    Capability, ComponentContext, ConfigureContext, HasCapability, InstanceParts,
};
use crate::runtime_config::{RuntimeConfig, ValueSource};
use anyhow::{Result, bail};
use bindings::spin::variables::variables::{self, Error};
use moa_manifest::template::{Template, is_valid_variable_name};
use moa_manifest::{Component, LoadedManifest};
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::{Accessor, HasData, Linker};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/variables",
        imports: { default: trappable },
    });
}

mod bindings_v2 {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/variables-v2",
        imports: { default: trappable },
    });
}

/// `wasi:config/store` (Spin 3+), the same values under WASI's names.
mod bindings_config {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/wasi-config",
        imports: { default: trappable },
    });
}

use bindings_config::wasi::config::store as wasi_config;
use bindings_v2::fermyon::spin::variables as variables_v2;

/// The application's variables with their values resolved.
#[derive(Debug, Clone, Default)]
pub struct AppVariables {
    values: BTreeMap<String, String>,
}

impl AppVariables {
    /// Resolves every `[variables]` entry; a required variable with no value is an error that
    /// says how to supply it.
    pub fn resolve(runtime_config: &RuntimeConfig, app: &LoadedManifest) -> Result<Self> {
        let configured: BTreeMap<String, ValueSource> =
            runtime_config.section("variables")?.unwrap_or_default();
        for name in configured.keys() {
            if !app.manifest.variables.contains_key(name) {
                bail!(
                    "{}: [variables] sets `{name}`, which {} does not declare\n  help: declare it under [variables] in the manifest or remove it from the runtime config",
                    runtime_config.describe(),
                    app.path.display()
                );
            }
        }
        let dotenv = match app.path.parent() {
            Some(dir) => read_dotenv(&dir.join(".env"))?,
            None => BTreeMap::new(),
        };
        let mut values = BTreeMap::new();
        for (name, decl) in &app.manifest.variables {
            let upper = name.to_ascii_uppercase();
            let names =
                ["MOA_VARIABLE_", "SPIN_VARIABLE_"].map(|prefix| format!("{prefix}{upper}"));
            let from_env = names
                .iter()
                .find_map(|key| std::env::var(key).ok())
                .or_else(|| names.iter().find_map(|key| dotenv.get(key).cloned()));
            let value = match (from_env, configured.get(name), &decl.default) {
                (Some(v), _, _) => v,
                (None, Some(source), _) => {
                    source.resolve(&format!("runtime config variable `{name}`"))?
                }
                (None, None, Some(default)) => default.clone(),
                (None, None, None) => bail!(
                    "variable `{name}` is required but has no value\n  help: export MOA_VARIABLE_{upper}=... (or SPIN_VARIABLE_{upper}), write it in the app directory's .env file, or set `{name} = \"...\"` under [variables] in the runtime config"
                ),
            };
            values.insert(name.clone(), value);
        }
        Ok(AppVariables { values })
    }

    /// Renders a `{{ var }}` template (already checked against the manifest at parse time).
    pub fn render(&self, template: &str) -> Result<String> {
        let template = Template::parse(template).map_err(anyhow::Error::msg)?;
        template.render(|name| {
            self.values
                .get(name)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("variable `{name}` is not declared"))
        })
    }

    /// The component's own variables (`[component.<id>.variables]`), rendered.
    pub fn for_component(&self, component: &Component) -> Result<ComponentVariables> {
        let mut values = BTreeMap::new();
        for (name, template) in &component.variables {
            values.insert(name.clone(), self.render(&template.value)?);
        }
        Ok(ComponentVariables {
            values: Arc::new(values),
        })
    }
}

/// The `KEY=value` lines of a `.env` file (none if there is no file), parsed as dotenv does:
/// comments, `export`, single and double quotes, escapes. The process environment is not touched.
fn read_dotenv(path: &std::path::Path) -> Result<BTreeMap<String, String>> {
    let lines = match dotenvy::from_path_iter(path) {
        Ok(lines) => lines,
        Err(dotenvy::Error::Io(err)) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(BTreeMap::new());
        }
        Err(err) => bail!("cannot read {}: {err}", path.display()),
    };
    let mut values = BTreeMap::new();
    for line in lines {
        match line {
            Ok((key, value)) => {
                values.insert(key, value);
            }
            Err(dotenvy::Error::LineParse(text, at)) => bail!(
                "{}: cannot parse `{text}` (at character {at})\n  help: write KEY=value lines, e.g. SPIN_VARIABLE_GREETING=\"hello\"",
                path.display()
            ),
            Err(err) => bail!("cannot read {}: {err}", path.display()),
        }
    }
    Ok(values)
}

/// The variables one component may read.
#[derive(Debug, Clone, Default)]
pub struct ComponentVariables {
    values: Arc<BTreeMap<String, String>>,
}

/// Marker type naming this capability in the linker.
pub struct Variables;

impl HasData for Variables {
    type Data<'a> = &'a ComponentVariables;
}

/// `spin:variables@3.0.0`: the component's own variables. The app's variables are resolved by
/// the app loader before any capability (others render templates with them), from `[variables]`.
pub struct VariablesCapability;

impl Capability for VariablesCapability {
    const NAME: &'static str = "variables";
    const RUNTIME_CONFIG_SECTIONS: &'static [&'static str] = &["variables"];
    const IMPORTS: &'static [&'static str] = &[
        "spin:variables@3.0.0",
        "fermyon:spin/variables@2.0.0",
        "wasi:config@0.2.0-draft-2024-09-27",
    ];

    type AppState = ();
    type ComponentState = ComponentVariables;
    type InstanceState = ComponentVariables;
    type View<'a> = &'a ComponentVariables;

    fn link<T: HasCapability<Self> + Send + 'static>(linker: &mut Linker<T>) -> Result<()> {
        variables::add_to_linker::<T, Variables>(linker, T::capability_view)?;
        variables_v2::add_to_linker::<T, Variables>(linker, T::capability_view)?;
        wasi_config::add_to_linker::<T, Variables>(linker, T::capability_view)?;
        Ok(())
    }

    async fn configure(_cx: &ConfigureContext<'_>) -> Result<()> {
        Ok(())
    }

    fn component(_app: &(), cx: &ComponentContext<'_>) -> Result<ComponentVariables> {
        cx.variables.for_component(cx.component)
    }

    fn instance(variables: &ComponentVariables) -> ComponentVariables {
        variables.clone()
    }

    fn view<'a>(parts: InstanceParts<'a, ComponentVariables>) -> &'a ComponentVariables {
        parts.state
    }
}

impl variables::Host for &ComponentVariables {}

impl ComponentVariables {
    fn lookup(&self, name: &str) -> Result<String, Error> {
        if !is_valid_variable_name(name) {
            return Err(Error::InvalidName(format!(
                "`{name}`: variable names use lowercase letters, digits and `_`"
            )));
        }
        self.values
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Undefined(format!("no variable `{name}` for this component")))
    }
}

impl variables_v2::Host for &ComponentVariables {
    fn get(&mut self, name: String) -> wasmtime::Result<Result<String, variables_v2::Error>> {
        Ok(self.lookup(&name).map_err(|error| match error {
            Error::InvalidName(m) => variables_v2::Error::InvalidName(m),
            Error::Undefined(m) => variables_v2::Error::Undefined(m),
            Error::Provider(m) => variables_v2::Error::Provider(m),
            Error::Other(m) => variables_v2::Error::Other(m),
        }))
    }
}

impl<T: Send> variables::HostWithStore<T> for Variables {
    async fn get(
        accessor: &Accessor<T, Self>,
        name: String,
    ) -> wasmtime::Result<Result<String, Error>> {
        Ok(accessor.with(|mut access| access.get().lookup(&name)))
    }
}

/// As Spin serves `wasi:config`: an undefined or invalid name is "no value", not an error.
impl wasi_config::Host for &ComponentVariables {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, wasi_config::Error>> {
        Ok(match self.lookup(&key) {
            Ok(value) => Ok(Some(value)),
            Err(Error::Undefined(_) | Error::InvalidName(_)) => Ok(None),
            Err(Error::Provider(message)) => Err(wasi_config::Error::Upstream(message)),
            Err(Error::Other(message)) => Err(wasi_config::Error::Io(message)),
        })
    }

    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, wasi_config::Error>> {
        Ok(Ok(self
            .values
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()))
    }
}
