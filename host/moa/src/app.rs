//! Loads an app: manifest + runtime config -> configured capabilities and, for every triggered
//! component, a compiled and pre-instantiated component with its grants and limits.

use crate::capabilities::variables::AppVariables;
use crate::capabilities::{ComponentContext, ConfigureContext, outbound_http};
use crate::engine::{LoadOrigin, MoaEngine};
use crate::invocation::Invocation;
use crate::runtime_config::RuntimeConfig;
use crate::state::{self, AppCapabilities, ComponentGrants, HostState};
use crate::telemetry::Metrics;
use crate::telemetry::guest_output::{self, GuestOutput, OutputBudget};
use anyhow::{Context as _, Result, anyhow};
use moa_manifest::{Component, FileMount, LoadedManifest};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{InstancePre, Linker};
use wasmtime::{Store, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wasmtime_wasi_http::WasiHttpCtx;

/// Host-wide limits, from the runtime config's `[limits]` (each component may lower or raise
/// its own memory and timeout in `[component.<id>.moa]`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostLimits {
    /// Largest linear memory one instance may use, in MiB.
    pub memory_limit_mb: u64,
    /// How long one request may run (guest CPU and waiting) before it is interrupted.
    pub request_timeout_ms: u64,
    /// Largest request body accepted; larger ones get 413.
    pub max_request_body_bytes: u64,
    /// How many requests one instance serves before it is discarded (1 = a fresh instance per
    /// request, the default and the isolation guarantee).
    pub max_instance_reuse: usize,
    /// Guest stdout/stderr each component may log per second (the rest is dropped and counted).
    pub guest_output_bytes_per_second: u64,
    /// Longest guest output line logged as one event.
    pub guest_output_max_line_bytes: usize,
    /// Most open client connections; more are closed at once (counted as rejected).
    pub max_connections: usize,
    /// Most requests handled at once; more get 503 with `Retry-After`.
    pub max_concurrent_requests: usize,
    /// How long a client may take to send a request's headers (HTTP/1) and how long an idle
    /// connection (HTTP/1 and HTTP/2) stays open.
    pub http_header_timeout_ms: u64,
    pub http_idle_timeout_ms: u64,
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits {
            memory_limit_mb: 128,
            request_timeout_ms: 30_000,
            max_request_body_bytes: 10 * 1024 * 1024,
            max_instance_reuse: 1,
            guest_output_bytes_per_second: guest_output::DEFAULT_BYTES_PER_SECOND,
            guest_output_max_line_bytes: guest_output::DEFAULT_MAX_LINE_BYTES,
            max_connections: 4096,
            max_concurrent_requests: 512,
            http_header_timeout_ms: 10_000,
            http_idle_timeout_ms: 60_000,
        }
    }
}

/// One component ready to be instantiated per request or per delivered event.
pub struct AppComponent {
    pub id: String,
    /// The wasm file it was loaded from.
    pub source: PathBuf,
    /// Compiled and linked; each trigger finds its export in it.
    pub pre: InstancePre<HostState>,
    pub grants: ComponentGrants,
    pub memory_limit_bytes: usize,
    pub request_timeout: Duration,
    pub max_instance_reuse: usize,
    pub origin: LoadOrigin,
    pub load_time: Duration,
    environment: Vec<(String, String)>,
    mounts: Vec<(PathBuf, String)>,
    output_budget: Arc<OutputBudget>,
}

impl AppComponent {
    /// A fresh store for one instance, working on `invocation`: WASI context (guest output
    /// captured as log events), memory limit, and the epoch callback that yields the guest's
    /// thread every tick and interrupts it at the invocation's deadline.
    pub fn new_store(
        &self,
        engine: &MoaEngine,
        invocation: Invocation,
    ) -> Result<Store<HostState>> {
        let output_request_id = Arc::new(std::sync::Mutex::new(invocation.request_id.clone()));
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(GuestOutput::new(
            "stdout",
            output_request_id.clone(),
            self.output_budget.clone(),
        ))
        .stderr(GuestOutput::new(
            "stderr",
            output_request_id.clone(),
            self.output_budget.clone(),
        ));
        for (key, value) in &self.environment {
            wasi.env(key, value);
        }
        for (host, guest) in &self.mounts {
            wasi.preopened_dir(host, guest, FsPerms::ReadOnly)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("cannot mount {} at {guest}", host.display()))?;
        }
        let mut state = HostState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: Default::default(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.memory_limit_bytes)
                .trap_on_grow_failure(true)
                .build(),
            capabilities: self.grants.instance_state(),
            invocation: invocation.clone(),
            output_request_id,
        };
        state.begin(invocation);
        let mut store = Store::new(engine.engine(), state);
        store.limiter(|state| &mut state.limits);
        // A guest running on the CPU gives its thread back every tick, so a busy loop never
        // holds a runtime worker (accept, other requests, consumers) for longer than that; at the
        // invocation's deadline the next tick interrupts it.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|store| {
            if std::time::Instant::now() >= store.data().invocation.deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
        Ok(store)
    }
}

/// A loaded app: its manifest, capabilities and components.
pub struct App {
    pub manifest: LoadedManifest,
    pub capabilities: AppCapabilities,
    pub components: BTreeMap<String, Arc<AppComponent>>,
    pub limits: HostLimits,
}

impl App {
    /// The loaded component `id` (every component a trigger names is loaded).
    pub fn component(&self, id: &str) -> Result<&Arc<AppComponent>> {
        self.components
            .get(id)
            .ok_or_else(|| anyhow!("component `{id}` is not loaded"))
    }

    /// Loads every component a trigger names. Capabilities connect their backends here (async);
    /// compiling runs on the blocking pool.
    pub async fn load(
        engine: &Arc<MoaEngine>,
        manifest: LoadedManifest,
        runtime_config: &RuntimeConfig,
        state_dir: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<App> {
        runtime_config.check_sections(&state::runtime_config_sections())?;
        let limits: HostLimits = runtime_config.section("limits")?.unwrap_or_default();
        if limits.max_instance_reuse == 0
            || limits.request_timeout_ms == 0
            || limits.memory_limit_mb == 0
            || limits.max_connections == 0
            || limits.max_concurrent_requests == 0
            || limits.http_header_timeout_ms == 0
            || limits.http_idle_timeout_ms == 0
            || limits.guest_output_max_line_bytes == 0
        {
            anyhow::bail!(
                "{}: [limits] values must be greater than zero\n  help: remove a key to use its default",
                runtime_config.describe()
            );
        }
        let variables = AppVariables::resolve(runtime_config, &manifest)?;
        let capabilities = AppCapabilities::configure(&ConfigureContext {
            runtime_config,
            state_dir,
            app: &manifest,
            metrics: &metrics,
            variables: &variables,
            configured: &Default::default(),
        })
        .await?;

        let mut linker = Linker::<HostState>::new(engine.engine());
        state::link(&mut linker)?;

        let mut components = BTreeMap::new();
        for component in manifest.manifest.triggered_components() {
            let allowed_hosts =
                Arc::new(outbound_http::configure(&manifest, component, &variables)?);
            let grants = capabilities.grants_for(&ComponentContext {
                app: &manifest,
                component,
                metrics: &metrics,
                variables: &variables,
                allowed_hosts: &allowed_hosts,
            })?;
            let loaded = load_component(
                engine, &linker, &manifest, component, &limits, &metrics, grants,
            )
            .await?;
            components.insert(component.id.clone(), Arc::new(loaded));
        }
        Ok(App {
            manifest,
            capabilities,
            components,
            limits,
        })
    }
}

async fn load_component(
    engine: &Arc<MoaEngine>,
    linker: &Linker<HostState>,
    app: &LoadedManifest,
    component: &Component,
    limits: &HostLimits,
    metrics: &Arc<Metrics>,
    grants: ComponentGrants,
) -> Result<AppComponent> {
    let started = Instant::now();
    let source = app.base_dir.join(&component.source.value);
    let compiled = {
        let (engine, source, with_dependencies) =
            (engine.clone(), source.clone(), component.clone());
        let paths = crate::dependencies::AppPaths {
            manifest: app.path.clone(),
            base_dir: app.base_dir.clone(),
            downloads: engine.cache_dir().map(|dir| dir.join("dependencies")),
        };
        tokio::task::spawn_blocking(move || {
            match crate::dependencies::Composition::read(&paths, &with_dependencies)? {
                None => engine.load_component(&source),
                Some(composition) => {
                    let key = composition.cache_key.clone();
                    engine.load_composed(&source, &key, move || composition.compose())
                }
            }
        })
        .await
        .context("compiling the component panicked")?
    };
    let (compiled, origin) = compiled.with_context(|| {
        format!(
            "{}:{}: component `{}`",
            app.path.display(),
            component.source.position,
            component.id
        )
    })?;
    let instance_pre = linker.instantiate_pre(&compiled).map_err(|err| {
        anyhow!(
            "component `{}` ({}) cannot be linked: {err}\n  help: moa provides {}; remove the other imports or use a newer moa",
            component.id,
            source.display(),
            state::imports().join(", ")
        )
    })?;
    let memory_mb = component
        .limits
        .memory_limit_mb
        .unwrap_or(limits.memory_limit_mb);
    let timeout_ms = component
        .limits
        .request_timeout_ms
        .unwrap_or(limits.request_timeout_ms);
    Ok(AppComponent {
        id: component.id.clone(),
        source,
        pre: instance_pre,
        grants,
        memory_limit_bytes: usize::try_from(memory_mb.saturating_mul(1 << 20))
            .unwrap_or(usize::MAX),
        request_timeout: Duration::from_millis(timeout_ms),
        max_instance_reuse: component
            .limits
            .max_instance_reuse
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(limits.max_instance_reuse),
        origin,
        load_time: started.elapsed(),
        environment: component
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        mounts: mounts(app, component)?,
        output_budget: OutputBudget::new(
            component.id.as_str().into(),
            limits.guest_output_max_line_bytes,
            limits.guest_output_bytes_per_second,
            metrics.clone(),
        ),
    })
}

/// The files an app needs beside its manifest, relative to its directory, for `moa registry push`:
/// each component's `source`, then every regular file under the directories its `files` mount.
pub fn app_files(app: &LoadedManifest) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let outside = |path: &Path| {
        anyhow::anyhow!(
            "{} is outside the app directory {}; a registry app carries only files under the directory of its spin.toml\n  help: move it under {} and point the manifest there",
            path.display(),
            app.base_dir.display(),
            app.base_dir.display()
        )
    };
    // Lexically: a symlink under the app directory is the app's (its target is read at push).
    let relative = |path: &Path| -> Result<PathBuf> {
        let full = app.base_dir.join(path);
        let inside = full
            .strip_prefix(&app.base_dir)
            .map_err(|_| outside(&full))?;
        if inside.components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        }) {
            return Err(outside(&full));
        }
        if !full.exists() {
            anyhow::bail!("{}: {} does not exist", app.path.display(), full.display());
        }
        Ok(inside.to_path_buf())
    };
    let mut components = Vec::new();
    let mut files = Vec::new();
    for component in app.manifest.components.values() {
        let source = relative(&component.source.value).with_context(|| {
            format!(
                "component `{}`: its source is missing\n  help: run `moa build` first (or `moa registry push --build`)",
                component.id
            )
        })?;
        components.push(source);
        // Downloaded dependencies are fetched again (and checked) where the app is pulled.
        for dependency in &component.dependencies {
            let Some(path) = dependency.source.path() else {
                continue;
            };
            let path = relative(path).with_context(|| {
                format!(
                    "component `{}`: dependency `{}` is missing\n  help: build it first or fix its `path`",
                    component.id, dependency.name
                )
            })?;
            if !components.contains(&path) {
                components.push(path);
            }
        }
        for (dir, _) in mounts(app, component)? {
            let mut pending = vec![relative(&dir)?];
            while let Some(next) = pending.pop() {
                let full = app.base_dir.join(&next);
                let mut entries: Vec<_> = std::fs::read_dir(&full)
                    .with_context(|| format!("cannot list {}", full.display()))?
                    .collect::<std::io::Result<_>>()
                    .with_context(|| format!("cannot list {}", full.display()))?;
                entries.sort_by_key(|e| e.file_name());
                for entry in entries {
                    let path = next.join(entry.file_name());
                    let kind = std::fs::metadata(entry.path())
                        .with_context(|| format!("cannot read {}", entry.path().display()))?;
                    if kind.is_dir() {
                        pending.push(path);
                    } else if kind.is_file() && !files.contains(&path) {
                        files.push(path);
                    }
                }
            }
        }
    }
    Ok((components, files))
}

/// Turns `files` entries into directory mounts. A glob mounts the directory before its first
/// wildcard at the same relative path in the guest (read-only).
fn mounts(app: &LoadedManifest, component: &Component) -> Result<Vec<(PathBuf, String)>> {
    if !component.exclude_files.is_empty() {
        anyhow::bail!(
            "{}: component `{}` uses exclude_files, which moa does not support yet\n  help: move the files to exclude out of the mounted directory and remove exclude_files",
            app.path.display(),
            component.id
        );
    }
    let mut out = Vec::new();
    for mount in &component.files {
        let (host, guest) = match mount {
            FileMount::Directory {
                source,
                destination,
            } => (app.base_dir.join(source), destination.clone()),
            FileMount::Pattern(pattern) => {
                let prefix: Vec<&str> = pattern
                    .split('/')
                    .take_while(|part| !part.contains(['*', '?', '[']))
                    .collect();
                let mut relative = prefix.join("/");
                if relative.is_empty() || relative == "." {
                    anyhow::bail!(
                        "{}: component `{}` has files = [\"{pattern}\"], which would expose the whole app directory (state, config) to the component\n  help: keep the files in a directory and mount that, e.g. files = [\"static/**\"]",
                        app.path.display(),
                        component.id
                    );
                }
                let host = app.base_dir.join(&relative);
                if host.is_file() {
                    relative = Path::new(&relative)
                        .parent()
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default();
                }
                (app.base_dir.join(&relative), format!("/{relative}"))
            }
        };
        if !host.is_dir() {
            anyhow::bail!(
                "{}: component `{}` mounts {}, which is not a directory\n  help: fix the `files` entry or create the directory",
                app.path.display(),
                component.id,
                host.display()
            );
        }
        out.push((host, guest));
    }
    Ok(out)
}
