//! SQLite capability: Spin's `spin:sqlite@3.1.0` (3.0.0, and Spin 2's `fermyon:spin/sqlite@2.0.0`)
//! over SQLite databases, one per label: a file under the state directory by default;
//! `[sqlite_database.<label>]` places it elsewhere, in memory, or on a remote libSQL server.

mod database;
mod host;
mod legacy;
mod libsql;

use crate::capabilities::{
    Capability, ComponentContext, ConfigureContext, HasCapability, InstanceParts,
};
use crate::invocation::Invocation;
use crate::runtime_config::ValueSource;
use anyhow::{Result, bail};
use database::{Location, SqliteDatabase};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::Linker;

pub use host::SqliteView;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/sqlite",
        imports: { default: async | trappable },
        with: {
            "spin:sqlite/sqlite.connection": super::host::OpenConnection,
        },
    });
}

/// The label every app has, even with no runtime config.
pub const DEFAULT_DATABASE: &str = "default";

/// `[sqlite_database.<label>]` in the runtime config (Spin's keys).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseConfig {
    #[serde(rename = "type")]
    kind: String,
    /// `spin`: the database file (relative to the runtime config); none = in memory.
    path: Option<PathBuf>,
    /// `libsql`: the server (`libsql://`, `https://` or `http://`), or `{ env = "NAME" }`.
    url: Option<ValueSource>,
    /// `libsql`: the token sent as `Authorization: Bearer`, or `{ env = "NAME" }`.
    token: Option<ValueSource>,
}

/// Every database of one app, by label.
pub struct SqliteDatabases {
    by_label: BTreeMap<String, Arc<SqliteDatabase>>,
}

impl SqliteDatabases {
    async fn configure(cx: &ConfigureContext<'_>) -> Result<Self> {
        let configs: BTreeMap<String, DatabaseConfig> = cx
            .runtime_config
            .section("sqlite_database")?
            .unwrap_or_default();
        let mut by_label = BTreeMap::new();
        for (label, config) in &configs {
            let wrong_key = |key: &str, kind: &str| {
                anyhow::anyhow!(
                    "{}: [sqlite_database.{label}] `{key}` does not apply to type = \"{kind}\"\n  help: type = \"spin\" takes `path`; type = \"libsql\" takes `url` and `token`",
                    cx.runtime_config.describe()
                )
            };
            if config.kind == "libsql" {
                if config.path.is_some() {
                    return Err(wrong_key("path", "libsql"));
                }
                let Some(url) = &config.url else {
                    bail!(
                        "{}: [sqlite_database.{label}] type = \"libsql\" needs `url`\n  help: add url = \"libsql://<database>.turso.io\" (or the http(s) URL of your sqld) and token = \"...\"",
                        cx.runtime_config.describe()
                    );
                };
                let url = url.resolve(&format!("[sqlite_database.{label}] url"))?;
                let token = config
                    .token
                    .as_ref()
                    .map(|token| token.resolve(&format!("[sqlite_database.{label}] token")))
                    .transpose()?;
                let database = libsql::LibsqlDatabase::new(&url, token).map_err(|err| {
                    anyhow::anyhow!(
                        "{}: [sqlite_database.{label}]: {err:#}",
                        cx.runtime_config.describe()
                    )
                })?;
                by_label.insert(label.clone(), Arc::new(SqliteDatabase::Remote(database)));
                continue;
            }
            if let Some(key) = [
                ("url", config.url.is_some()),
                ("token", config.token.is_some()),
            ]
            .iter()
            .find_map(|(key, set)| set.then_some(*key))
            {
                return Err(wrong_key(key, &config.kind));
            }
            let location = match config.kind.as_str() {
                "spin" | "sqlite" => match &config.path {
                    Some(path) if path.is_relative() => Location::File(
                        cx.runtime_config
                            .base_dir()
                            .unwrap_or(Path::new("."))
                            .join(path),
                    ),
                    Some(path) => Location::File(path.clone()),
                    None => Location::Memory(format!(
                        "file:moa-sqlite-{}-{label}?mode=memory&cache=shared",
                        uuid::Uuid::new_v4().simple()
                    )),
                },
                other => bail!(
                    "{}: [sqlite_database.{label}] has unknown type `{other}`\n  help: use type = \"spin\" (embedded SQLite; `path` for a file, none for in memory) or type = \"libsql\" (a remote libSQL server: `url`, `token`)",
                    cx.runtime_config.describe()
                ),
            };
            let database = SqliteDatabase::open(location).map_err(|err| {
                anyhow::anyhow!(
                    "{}: [sqlite_database.{label}]: {err:#}",
                    cx.runtime_config.describe()
                )
            })?;
            by_label.insert(label.clone(), Arc::new(database));
        }
        // Components that use SQLite get the `default` database without any configuration.
        let app = cx.app;
        let mut used_default = false;
        for component in app.manifest.components.values() {
            for label in &component.string_list(&app.path, "sqlite_databases")? {
                if label.value == DEFAULT_DATABASE {
                    used_default = true;
                } else if !by_label.contains_key(&label.value) {
                    bail!(
                        "{}:{}: component `{}` uses SQLite database `{}`, which is not defined\n  help: add [sqlite_database.{}] with type = \"spin\" to the runtime config, or use the \"default\" database",
                        app.path.display(),
                        label.position,
                        component.id,
                        label.value,
                        label.value
                    );
                }
            }
        }
        if used_default && !by_label.contains_key(DEFAULT_DATABASE) {
            let path = database::default_path(cx.state_dir, DEFAULT_DATABASE);
            by_label.insert(
                DEFAULT_DATABASE.to_string(),
                Arc::new(SqliteDatabase::open(Location::File(path))?),
            );
        }
        Ok(SqliteDatabases { by_label })
    }
}

/// Spin's `spin:sqlite` over the app's databases, allowed per `sqlite_databases` label.
pub struct SqliteCapability;

/// One component's databases: the labels it may open.
pub struct SqliteGrant {
    databases: BTreeMap<String, Arc<SqliteDatabase>>,
}

/// Per instance: the grant, and when statements are interrupted: a tenth of the invocation's
/// time before its deadline, so the component can still answer with the error.
pub struct SqliteInstance {
    grant: Arc<SqliteGrant>,
    deadline: Instant,
}

impl Capability for SqliteCapability {
    const NAME: &'static str = "sqlite";
    const RUNTIME_CONFIG_SECTIONS: &'static [&'static str] = &["sqlite_database"];
    const MANIFEST_KEYS: &'static [&'static str] = &["sqlite_databases"];
    const IMPORTS: &'static [&'static str] = &["spin:sqlite@3.1.0", "fermyon:spin/sqlite@2.0.0"];

    type AppState = SqliteDatabases;
    type ComponentState = Arc<SqliteGrant>;
    type InstanceState = SqliteInstance;
    type View<'a> = SqliteView<'a>;

    fn link<T: HasCapability<Self> + Send + 'static>(linker: &mut Linker<T>) -> Result<()> {
        host::add_to_linker(linker, T::capability_view)?;
        legacy::add_to_linker(linker, T::capability_view)?;
        Ok(())
    }

    async fn configure(cx: &ConfigureContext<'_>) -> Result<SqliteDatabases> {
        SqliteDatabases::configure(cx).await
    }

    fn component(app: &SqliteDatabases, cx: &ComponentContext<'_>) -> Result<Arc<SqliteGrant>> {
        let databases = cx
            .strings("sqlite_databases")?
            .into_iter()
            .filter_map(|label| {
                let database = app.by_label.get(&label)?.clone();
                Some((label, database))
            })
            .collect();
        Ok(Arc::new(SqliteGrant { databases }))
    }

    fn instance(grant: &Arc<SqliteGrant>) -> SqliteInstance {
        SqliteInstance {
            grant: grant.clone(),
            deadline: Instant::now(),
        }
    }

    fn view<'a>(parts: InstanceParts<'a, SqliteInstance>) -> SqliteView<'a> {
        SqliteView {
            instance: parts.state,
            table: parts.table,
        }
    }

    fn begin(state: &mut SqliteInstance, invocation: &Invocation) {
        state.deadline = invocation.statement_deadline();
    }
}
