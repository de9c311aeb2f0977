//! Documents capability: `moa:documents` (stores of JSON documents queried with MongoDB's language,
//! transactions, a transactional outbox and an idempotent inbox) over MongoDB or the embedded store.

mod embedded;
mod host;
mod mongo;
mod ops;
mod outbox;
mod query;
mod shape;
mod update;
mod values;

use crate::capabilities::messaging::{MessagingCapability, OutgoingMessage};
use crate::capabilities::{
    Capability, ComponentContext, ConfigureContext, HasCapability, InstanceParts,
};
use crate::runtime_config::ValueSource;
use anyhow::{Context as _, Result, bail};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Linker;

pub use host::{Documents, DocumentsView, Lent, OpenTransaction};
pub(crate) use mongo::{map_error as mongo_error, to_bson, to_json};
pub use ops::{DocumentError, FindSpec, Op, Output, Query, UpdateSpec};
pub use query::Filter;

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/documents",
        imports: { default: async | trappable },
        with: {
            "moa:documents/documents.store": super::host::OpenStore,
            "moa:documents/documents.transaction": super::host::OpenTransaction,
        },
    });
}

/// A backend holding one store's collections.
#[async_trait]
pub trait DocumentBackend: Send + Sync {
    /// `mongodb` or `embedded`, for logs.
    fn kind(&self) -> &'static str;
    /// Runs one operation atomically.
    async fn run(&self, op: Op) -> Result<Output, DocumentError>;
    /// Starts a transaction.
    async fn begin(&self) -> Result<Box<dyn DocumentTransaction>, DocumentError>;
    /// Creates a declared index (a no-op when it exists).
    async fn create_index(&self, index: &IndexSpec) -> Result<(), DocumentError>;

    /// Up to `limit` staged outbox messages to publish next, every key's in its order.
    async fn outbox_pending(&self, limit: usize) -> Result<Vec<outbox::Staged>, DocumentError>;
    /// Takes or renews the relay lease for `holder` for `for_ms` (a negative time gives it up);
    /// false when another holder has it.
    async fn outbox_lease(&self, holder: &str, for_ms: i64) -> Result<bool, DocumentError>;
    /// Deletes published messages (what `outbox_pending` returned, all of it) if `holder` still
    /// holds the lease, renewing it for `for_ms`; else [`outbox::lease_lost`].
    async fn outbox_remove(
        &self,
        published: &[outbox::Staged],
        holder: &str,
        for_ms: i64,
    ) -> Result<(), DocumentError>;
    /// How many staged messages wait.
    async fn outbox_backlog(&self) -> Result<u64, DocumentError>;
    /// Deletes inbox marks made before `before_ms`; returns how many.
    async fn inbox_prune(&self, before_ms: i64) -> Result<u64, DocumentError>;
}

/// An open transaction; dropping it aborts it.
#[async_trait]
pub trait DocumentTransaction: Send {
    async fn run(&mut self, op: Op) -> Result<Output, DocumentError>;
    /// Stages `message` for the outbox, to be published once the transaction commits; returns
    /// its message id.
    async fn stage(&mut self, message: OutgoingMessage) -> Result<String, DocumentError>;
    /// Marks `message_id` processed by `consumer` at commit; true when it was not marked before.
    async fn first_time(&mut self, consumer: &str, message_id: &str)
    -> Result<bool, DocumentError>;
    async fn commit(self: Box<Self>) -> Result<(), DocumentError>;
    async fn abort(self: Box<Self>) -> Result<(), DocumentError>;
}

/// An index declared in the manifest (`[[component.<id>.document_indexes]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSpec {
    pub store: String,
    pub collection: String,
    /// `(path, ascending)` in order.
    pub keys: Vec<(String, bool)>,
    pub unique: bool,
    pub name: String,
}

/// `[document_store.<label>]` in the runtime config.
#[derive(Debug, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum StoreConfig {
    Embedded {
        /// The SQLite file (default: `<state dir>/documents/<label>.db`).
        path: Option<PathBuf>,
        /// How long the writer waits for another process holding the file (default 5000).
        busy_timeout_ms: Option<u64>,
        outbox_poll_ms: Option<u64>,
        /// How long inbox marks are kept (default 168 hours: a week).
        inbox_retention_hours: Option<u64>,
    },
    Mongodb {
        /// `mongodb://...` or `mongodb+srv://...`; put it in the environment (`{ env = "..." }`).
        url: ValueSource,
        database: String,
        /// Connections per host (the driver's `maxPoolSize`).
        pool_size: Option<u32>,
        /// Server selection and connect timeout (default 5000).
        timeout_ms: Option<u64>,
        outbox_poll_ms: Option<u64>,
        inbox_retention_hours: Option<u64>,
    },
}

/// One configured store.
pub struct DocumentStore {
    pub label: String,
    pub backend: Arc<dyn DocumentBackend>,
    pub outbox: Arc<outbox::Outbox>,
}

/// Every store of the app, by label, and the outbox relays that run beside them.
pub struct DocumentStores {
    stores: BTreeMap<String, Arc<DocumentStore>>,
    _relays: tokio_util::sync::DropGuard,
}

impl DocumentStores {
    pub fn store(&self, label: &str) -> Option<&Arc<DocumentStore>> {
        self.stores.get(label)
    }

    async fn configure(cx: &ConfigureContext<'_>) -> Result<Self> {
        let describe = cx.runtime_config.describe();
        let configs: BTreeMap<String, StoreConfig> = cx
            .runtime_config
            .section("document_store")?
            .unwrap_or_default();
        // Every label some component is granted, plus every configured one.
        let mut labels: BTreeSet<String> = configs.keys().cloned().collect();
        for component in cx.app.manifest.components.values() {
            for label in component.string_list(&cx.app.path, "document_stores")? {
                labels.insert(label.value);
            }
        }
        let brokers = cx
            .app_state::<MessagingCapability>()
            .context("the documents capability needs messaging registered before it")?;
        let relay_metrics = outbox::RelayMetrics::register(cx.metrics);
        let cancel = tokio_util::sync::CancellationToken::new();
        let mut stores = BTreeMap::new();
        for label in labels {
            let (backend, poll, retention): (Arc<dyn DocumentBackend>, Option<u64>, Option<u64>) =
                match configs.get(&label) {
                    None => (
                        Arc::new(embedded::EmbeddedStore::open(
                            &cx.state_dir.join("documents").join(format!("{label}.db")),
                            Duration::from_secs(5),
                        )?),
                        None,
                        None,
                    ),
                    Some(StoreConfig::Embedded {
                        path,
                        busy_timeout_ms,
                        outbox_poll_ms,
                        inbox_retention_hours,
                    }) => {
                        let path = match path {
                            Some(p) if p.is_relative() => cx
                                .runtime_config
                                .base_dir()
                                .unwrap_or(std::path::Path::new("."))
                                .join(p),
                            Some(p) => p.clone(),
                            None => cx.state_dir.join("documents").join(format!("{label}.db")),
                        };
                        let store = embedded::EmbeddedStore::open(
                            &path,
                            Duration::from_millis(busy_timeout_ms.unwrap_or(5000)),
                        )
                        .with_context(|| format!("{describe}: [document_store.{label}]"))?;
                        (Arc::new(store), *outbox_poll_ms, *inbox_retention_hours)
                    }
                    Some(StoreConfig::Mongodb {
                        url,
                        database,
                        pool_size,
                        timeout_ms,
                        outbox_poll_ms,
                        inbox_retention_hours,
                    }) => {
                        let settings = mongo::MongoSettings {
                            url: url.resolve(&format!("[document_store.{label}] url"))?,
                            database: database.clone(),
                            pool_size: *pool_size,
                            timeout: Duration::from_millis(timeout_ms.unwrap_or(5000)),
                        };
                        let store = mongo::MongoStore::connect(&settings)
                        .await
                        .with_context(|| format!("{describe}: [document_store.{label}]\n  help: check the URL and that the server runs (transactions need a replica set)"))?;
                        for index in outbox::collections::indexes(&label) {
                            store
                            .create_index(&index)
                            .await
                            .map_err(|e| anyhow::anyhow!("{e}"))
                            .with_context(|| format!("{describe}: [document_store.{label}]: cannot create the outbox index `{}`", index.name))?;
                        }
                        (Arc::new(store), *outbox_poll_ms, *inbox_retention_hours)
                    }
                };
            let outbox = outbox::Outbox::new(
                &label,
                backend.clone(),
                (*brokers).clone(),
                Duration::from_secs(retention.unwrap_or(168).saturating_mul(3600)),
            );
            outbox::spawn_relay(
                outbox.clone(),
                Duration::from_millis(poll.unwrap_or(1000).max(10)),
                relay_metrics.clone(),
                cancel.child_token(),
            );
            stores.insert(
                label.clone(),
                Arc::new(DocumentStore {
                    label,
                    backend,
                    outbox,
                }),
            );
        }
        for index in declared_indexes(cx)? {
            let Some(store) = stores.get(&index.store) else {
                continue;
            };
            store
                .backend
                .create_index(&index)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| {
                    format!(
                        "cannot create index `{}` on `{}` in document store `{}`",
                        index.name, index.collection, index.store
                    )
                })?;
        }
        Ok(DocumentStores {
            stores,
            _relays: cancel.drop_guard(),
        })
    }
}

/// `[[component.<id>.document_indexes]]` entries of every component, checked.
fn declared_indexes(cx: &ConfigureContext<'_>) -> Result<Vec<IndexSpec>> {
    let mut out = Vec::new();
    for component in cx.app.manifest.components.values() {
        let Some(setting) = component.capability_settings.get("document_indexes") else {
            continue;
        };
        let at = format!(
            "{}:{}: component `{}`",
            cx.app.path.display(),
            setting.position,
            component.id
        );
        let granted = component.string_list(&cx.app.path, "document_stores")?;
        let entries = setting.value.as_array().with_context(|| {
            format!("{at}: `document_indexes` is a list of tables\n  help: write [[component.{}.document_indexes]] with collection = \"...\" and keys = [\"field\", \"-other\"]", component.id)
        })?;
        for entry in entries {
            let spec = parse_index(entry)
                .map_err(|message| anyhow::anyhow!("{at}: document_indexes: {message}\n  help: an index is {{ store = \"default\", collection = \"orders\", keys = [\"customer\", \"-created_at\"], unique = false }}"))?;
            if !granted.iter().any(|g| g.value == spec.store) {
                bail!(
                    "{at}: document_indexes names store `{}`, which the component's document_stores does not list",
                    spec.store
                );
            }
            out.push(spec);
        }
    }
    Ok(out)
}

fn parse_index(entry: &toml::Value) -> Result<IndexSpec, String> {
    let table = entry.as_table().ok_or("each index is a table")?;
    for key in table.keys() {
        if !["store", "collection", "keys", "unique", "name"].contains(&key.as_str()) {
            return Err(format!("unknown key `{key}`"));
        }
    }
    let text = |key: &str| table.get(key).and_then(toml::Value::as_str);
    let store = text("store").unwrap_or("default").to_string();
    let collection = text("collection")
        .ok_or("`collection` is missing")?
        .to_string();
    ops::check_collection(&collection).map_err(|e| e.to_string())?;
    let keys = table
        .get("keys")
        .and_then(toml::Value::as_array)
        .filter(|k| !k.is_empty())
        .ok_or("`keys` is a non-empty list such as [\"customer\", \"-created_at\"]")?;
    let mut parsed = Vec::new();
    for key in keys {
        let key = key.as_str().ok_or("`keys` holds strings")?;
        let (path, ascending) = match key.strip_prefix('-') {
            Some(path) => (path, false),
            None => (key.strip_prefix('+').unwrap_or(key), true),
        };
        let valid = !path.is_empty()
            && path.split('.').all(|segment| {
                !segment.is_empty()
                    && segment
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        if !valid {
            return Err(format!(
                "key `{key}`: use field paths of letters, digits and `_` (dotted for nested), `-` in front for descending"
            ));
        }
        parsed.push((path.to_string(), ascending));
    }
    let unique = match table.get("unique") {
        None => false,
        Some(value) => value.as_bool().ok_or("`unique` is true or false")?,
    };
    let name = match text("name") {
        Some(name) if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            name.to_string()
        }
        Some(name) => return Err(format!("name `{name}`: use letters, digits and `_`")),
        None => parsed
            .iter()
            .map(|(path, asc)| format!("{}_{}", path.replace('.', "_"), if *asc { 1 } else { -1 }))
            .collect::<Vec<_>>()
            .join("_")
            .replace('-', "m"),
    };
    Ok(IndexSpec {
        store,
        collection,
        keys: parsed,
        unique,
        name,
    })
}

/// What one component may use: its stores and the topics its outbox messages may go to.
#[derive(Clone)]
pub struct DocumentsGrant {
    stores: Arc<DocumentStores>,
    labels: Arc<[String]>,
    topics: Arc<[String]>,
    /// Per instance: the stores it has a transaction open on.
    open: Arc<host::OpenTransactions>,
}

impl DocumentsGrant {
    fn store(&self, label: &str) -> Result<Arc<DocumentStore>, DocumentError> {
        if !self.labels.iter().any(|l| l == label) {
            return Err(DocumentError::AccessDenied(format!(
                "document store `{label}` is not in this component's document_stores"
            )));
        }
        self.stores.store(label).cloned().ok_or_else(|| {
            DocumentError::Other(format!("document store `{label}` is not configured"))
        })
    }
}

/// `moa:documents/documents` over the stores of `[document_store.<label>]` (embedded by default).
pub struct DocumentsCapability;

impl Capability for DocumentsCapability {
    const NAME: &'static str = "documents";
    const RUNTIME_CONFIG_SECTIONS: &'static [&'static str] = &["document_store"];
    const MANIFEST_KEYS: &'static [&'static str] = &["document_stores", "document_indexes"];
    const IMPORTS: &'static [&'static str] = &["moa:documents/documents@0.1.0"];

    type AppState = Arc<DocumentStores>;
    type ComponentState = DocumentsGrant;
    type InstanceState = DocumentsGrant;
    type View<'a> = DocumentsView<'a>;

    fn link<T: HasCapability<Self> + Send + 'static>(linker: &mut Linker<T>) -> Result<()> {
        bindings::moa::documents::documents::add_to_linker::<T, Documents>(
            linker,
            T::capability_view,
        )?;
        Ok(())
    }

    async fn configure(cx: &ConfigureContext<'_>) -> Result<Arc<DocumentStores>> {
        Ok(Arc::new(DocumentStores::configure(cx).await?))
    }

    fn component(
        stores: &Arc<DocumentStores>,
        cx: &ComponentContext<'_>,
    ) -> Result<DocumentsGrant> {
        Ok(DocumentsGrant {
            stores: stores.clone(),
            labels: cx.strings("document_stores")?.into(),
            topics: cx.strings("allowed_publish_topics")?.into(),
            open: Arc::default(),
        })
    }

    fn instance(grant: &DocumentsGrant) -> DocumentsGrant {
        DocumentsGrant {
            open: Arc::default(),
            ..grant.clone()
        }
    }

    fn view<'a>(parts: InstanceParts<'a, DocumentsGrant>) -> DocumentsView<'a> {
        DocumentsView {
            grant: parts.state,
            table: parts.table,
            invocation: parts.invocation,
        }
    }
}
