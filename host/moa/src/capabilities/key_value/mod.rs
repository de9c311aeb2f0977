//! Key-value capability: `spin:key-value@3.0.0` (and Spin 2's, and `wasi:keyvalue`), backed by an embedded
//! SQLite store by default; `[key_value_store.<label>]` in the runtime config picks SQLite or Redis.

mod embedded;
mod host;
mod host_v2;
mod redis_store;
mod wasi;

use crate::capabilities::{
    Capability, ComponentContext, ConfigureContext, HasCapability, InstanceParts,
};
use crate::runtime_config::{RuntimeConfig, ValueSource};
use anyhow::{Context as _, Result, bail};
use async_trait::async_trait;
use moa_manifest::LoadedManifest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmtime::component::Linker;

pub use host::{KeyValue, KeyValueView};

/// `spin:key-value@3.0.0` and `fermyon:spin/key-value@2.0.0` over the configured stores.
pub struct KeyValueCapability;

impl Capability for KeyValueCapability {
    const NAME: &'static str = "key-value";
    const RUNTIME_CONFIG_SECTIONS: &'static [&'static str] = &["key_value_store"];
    const MANIFEST_KEYS: &'static [&'static str] = &["key_value_stores"];
    const IMPORTS: &'static [&'static str] = &[
        "spin:key-value@3.0.0",
        "fermyon:spin/key-value@2.0.0",
        "wasi:keyvalue@0.2.0-draft2",
    ];

    type AppState = KeyValueStores;
    type ComponentState = KeyValueGrant;
    type InstanceState = KeyValueGrant;
    type View<'a> = KeyValueView<'a>;

    fn link<T: HasCapability<Self> + Send + 'static>(linker: &mut Linker<T>) -> Result<()> {
        host::add_to_linker(linker, T::capability_view)?;
        host_v2::add_to_linker(linker, T::capability_view)?;
        wasi::add_to_linker(linker, T::capability_view)?;
        Ok(())
    }

    async fn configure(cx: &ConfigureContext<'_>) -> Result<KeyValueStores> {
        KeyValueStores::configure(cx.runtime_config, cx.state_dir, cx.app).await
    }

    fn component(stores: &KeyValueStores, cx: &ComponentContext<'_>) -> Result<KeyValueGrant> {
        Ok(stores.grant(&cx.strings("key_value_stores")?))
    }

    fn instance(grant: &KeyValueGrant) -> KeyValueGrant {
        grant.clone()
    }

    fn view<'a>(parts: InstanceParts<'a, KeyValueGrant>) -> KeyValueView<'a> {
        KeyValueView {
            grant: parts.state,
            table: parts.table,
        }
    }
}

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/key-value",
        imports: { default: trappable },
        with: {
            "spin:key-value/key-value.store": super::host::OpenStore,
        },
    });
}

/// `fermyon:spin/key-value@2.0.0`, the same stores for spin-sdk <= 5 components.
mod bindings_v2 {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/key-value-v2",
        imports: { default: async | trappable },
        with: {
            "fermyon:spin/key-value.store": super::host::OpenStore,
        },
    });
}

/// `wasi:keyvalue@0.2.0-draft2` (Spin 3+), the same stores for components written against WASI.
mod bindings_wasi {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/wasi-keyvalue",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::host::OpenStore,
            "wasi:keyvalue/atomics.cas": super::wasi::CasHandle,
        },
    });
}

/// An error from a backend, turned into the WIT `error::other` for the component.
#[derive(Debug, thiserror::Error)]
pub enum KeyValueError {
    #[error("{0}")]
    Other(String),
}

/// A place key-value data lives. One backend may serve several store labels.
#[async_trait]
pub trait KeyValueBackend: Send + Sync {
    async fn get(&self, store: &str, key: &str) -> Result<Option<Vec<u8>>, KeyValueError>;
    async fn set(&self, store: &str, key: &str, value: Vec<u8>) -> Result<(), KeyValueError>;
    async fn delete(&self, store: &str, key: &str) -> Result<(), KeyValueError>;
    async fn exists(&self, store: &str, key: &str) -> Result<bool, KeyValueError>;
    async fn get_keys(&self, store: &str) -> Result<Vec<String>, KeyValueError>;
    /// Adds `delta` to the key's value (a decimal integer; absent = 0), atomically, and returns the sum.
    async fn increment(&self, store: &str, key: &str, delta: i64) -> Result<i64, KeyValueError>;
    /// Sets `value` only if the key still holds `expected` (`None`: absent), atomically; `false`
    /// when it did not.
    async fn compare_and_swap(
        &self,
        store: &str,
        key: &str,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, KeyValueError>;
}

/// `[key_value_store.<label>]` in the runtime config.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreConfig {
    #[serde(rename = "type")]
    kind: String,
    /// `spin`/`sqlite`: the database file.
    path: Option<PathBuf>,
    /// `redis`: `redis://[user:pass@]host:port[/db]`, literal or `{ env = "NAME" }`.
    url: Option<ValueSource>,
    /// `redis`: put before every key (default `<label>:`), so stores sharing a Redis stay apart.
    prefix: Option<String>,
}

/// The label every app has, even with no runtime config.
pub const DEFAULT_STORE: &str = "default";

/// All configured stores of one app, shared by every instance.
#[derive(Clone)]
pub struct KeyValueStores {
    backends: Arc<BTreeMap<String, Arc<dyn KeyValueBackend>>>,
}

impl KeyValueStores {
    /// Reads `[key_value_store]` (the `default` store is embedded SQLite under `state_dir` unless
    /// configured) and checks that every component's `key_value_stores` label exists.
    pub async fn configure(
        runtime_config: &RuntimeConfig,
        state_dir: &Path,
        app: &LoadedManifest,
    ) -> Result<Self> {
        let configs: BTreeMap<String, StoreConfig> = runtime_config
            .section("key_value_store")?
            .unwrap_or_default();
        let mut backends: BTreeMap<String, Arc<dyn KeyValueBackend>> = BTreeMap::new();
        let mut redis_prefixes: Vec<(String, (String, String))> = Vec::new();
        for (label, config) in &configs {
            let backend: Arc<dyn KeyValueBackend> = match config.kind.as_str() {
                "spin" | "sqlite" => {
                    let path = match &config.path {
                        Some(p) if p.is_relative() => {
                            runtime_config.base_dir().unwrap_or(Path::new(".")).join(p)
                        }
                        Some(p) => p.clone(),
                        None => state_dir.join(format!("key_value.{label}.db")),
                    };
                    Arc::new(embedded::SqliteStore::open(&path)?)
                }
                "redis" => {
                    let Some(url) = &config.url else {
                        bail!(
                            "{}: [key_value_store.{label}] type = \"redis\" needs `url`\n  help: add url = \"redis://127.0.0.1:6379\" (or url = {{ env = \"REDIS_URL\" }})",
                            runtime_config.describe()
                        );
                    };
                    let url = url.resolve(&format!("[key_value_store.{label}] url"))?;
                    // Each store gets its own key space on a shared Redis: `<label>:` unless set.
                    let prefix = config.prefix.clone().unwrap_or_else(|| format!("{label}:"));
                    if let Some((other, _)) =
                        redis_prefixes
                            .iter()
                            .find(|(_, (u, p)): &&(String, (String, String))| {
                                *u == url
                                    && (p.starts_with(&prefix) || prefix.starts_with(p.as_str()))
                            })
                    {
                        bail!(
                            "{}: [key_value_store.{label}] and [key_value_store.{other}] share a Redis with overlapping key prefixes, so each could read the other's keys\n  help: give each store its own `prefix` (neither a prefix of the other) or its own Redis database",
                            runtime_config.describe()
                        );
                    }
                    redis_prefixes.push((label.clone(), (url.clone(), prefix.clone())));
                    let store = redis_store::RedisStore::connect(&url, Some(prefix))
                        .await
                        .with_context(|| {
                            format!("{}: [key_value_store.{label}]", runtime_config.describe())
                        })?;
                    Arc::new(store)
                }
                other => bail!(
                    "{}: [key_value_store.{label}] has unknown type `{other}`\n  help: use type = \"spin\" (embedded SQLite) or type = \"redis\"",
                    runtime_config.describe()
                ),
            };
            backends.insert(label.clone(), backend);
        }
        if !backends.contains_key(DEFAULT_STORE) {
            let sqlite = embedded::SqliteStore::open(&state_dir.join("key_value.db"))?;
            backends.insert(DEFAULT_STORE.into(), Arc::new(sqlite));
        }

        for component in app.manifest.components.values() {
            for label in &component.string_list(&app.path, "key_value_stores")? {
                if !backends.contains_key(&label.value) {
                    bail!(
                        "{}:{}: component `{}` uses key-value store `{}`, which is not defined\n  help: add [key_value_store.{}] with type = \"spin\" to the runtime config, or use the \"default\" store",
                        app.path.display(),
                        label.position,
                        component.id,
                        label.value,
                        label.value
                    );
                }
            }
        }
        Ok(KeyValueStores {
            backends: Arc::new(backends),
        })
    }

    /// The per-component grant: which labels this component may open.
    pub fn grant(&self, allowed: &[String]) -> KeyValueGrant {
        KeyValueGrant {
            stores: self.clone(),
            allowed: allowed.to_vec().into(),
        }
    }
}

/// One component's view of the stores: the shared backends plus the labels it may open.
#[derive(Clone)]
pub struct KeyValueGrant {
    stores: KeyValueStores,
    allowed: Arc<[String]>,
}

impl KeyValueGrant {
    fn open(
        &self,
        label: &str,
    ) -> Result<Arc<dyn KeyValueBackend>, bindings::spin::key_value::key_value::Error> {
        use bindings::spin::key_value::key_value::Error;
        if !self.allowed.iter().any(|l| l == label) {
            return Err(Error::AccessDenied);
        }
        self.stores
            .backends
            .get(label)
            .cloned()
            .ok_or(Error::NoSuchStore)
    }
}
