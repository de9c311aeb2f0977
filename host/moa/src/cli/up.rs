//! `moa up`: load the app, print its routes, serve HTTP (and the admin listener with
//! `/metrics`) until Ctrl-C or SIGTERM, then drain in-flight requests.

use anyhow::{Context as _, Result};
use clap::Args;
use moa::app::App;
use moa::engine::{EngineSettings, MoaEngine};
use moa::runtime_config::RuntimeConfig;
use moa::telemetry::{self, LogFormat, Metrics};
use moa::triggers::{self, TriggerConfigs, TriggerContext};
use moa_manifest::HostKeys;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
pub struct UpArgs {
    /// The app's manifest, a directory holding spin.toml, or a registry reference
    /// (HOST[:PORT]/REPOSITORY[:TAG|@sha256:DIGEST]) pushed with `moa registry push`.
    #[arg(short = 'f', long = "from", value_name = "MANIFEST|REFERENCE")]
    pub from: Option<PathBuf>,

    /// Run the app pushed as this registry reference (pulled, digest-checked and cached first).
    #[arg(long, value_name = "REFERENCE", conflicts_with = "from")]
    pub from_registry: Option<String>,

    #[command(flatten)]
    pub registry: super::registry::AccessArgs,

    /// Address to serve HTTP triggers on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:3000", env = "MOA_LISTEN")]
    pub listen: SocketAddr,

    /// Runtime config (TOML): key-value backends, variables, limits. Without it every capability
    /// uses its embedded default.
    #[arg(long, value_name = "FILE", env = "MOA_RUNTIME_CONFIG_FILE")]
    pub runtime_config_file: Option<PathBuf>,

    /// Where embedded backends keep data (default: `.moa` next to the manifest).
    #[arg(long, value_name = "DIR", env = "MOA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Admin listener for Prometheus `/metrics` and `/healthz` (off unless given).
    #[arg(long, value_name = "ADDR", env = "MOA_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Log line format on stderr.
    #[arg(long, value_enum, default_value = "json", env = "MOA_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Run `moa build` first.
    #[arg(long)]
    pub build: bool,

    /// How long to wait for in-flight requests on shutdown, in seconds.
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    pub drain_timeout: u64,
}

pub fn run(mut args: UpArgs) -> Result<()> {
    let reference = args.from_registry.clone().or_else(|| {
        args.from
            .as_deref()
            .filter(|from| super::registry::is_registry_reference(from))
            .and_then(|from| from.to_str().map(str::to_string))
    });
    let manifest_path = match &reference {
        Some(reference) => {
            if args.build {
                anyhow::bail!(
                    "--build builds a local app; {reference} is a registry app\n  help: build and push it with `moa registry push --build {reference}`"
                );
            }
            let manifest = super::registry::pull_app(reference, &args.registry)?;
            // A pulled app's directory is a shared cache: its state lives where moa runs.
            args.state_dir.get_or_insert_with(|| PathBuf::from(".moa"));
            manifest
        }
        None => super::manifest_path(args.from.as_deref())?,
    };
    if args.build {
        super::build::run(&super::build::BuildArgs {
            from: Some(manifest_path.clone()),
            component: Vec::new(),
        })?;
    }
    let _telemetry = telemetry::init(args.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args, manifest_path, _telemetry.traces_exported))
}

async fn serve(args: UpArgs, manifest_path: PathBuf, traces_exported: bool) -> Result<()> {
    let manifest = moa_manifest::load(
        &manifest_path,
        HostKeys {
            component_keys: &moa::state::manifest_keys(),
            trigger_kinds: &triggers::trigger_kinds(),
        },
    )?;
    // Every trigger reads and checks its section before anything compiles.
    let trigger_configs = TriggerConfigs::from_manifest(&manifest)?;
    let runtime_config = match &args.runtime_config_file {
        Some(path) => RuntimeConfig::load(path)?,
        None => RuntimeConfig::default(),
    };
    let engine_settings = runtime_config
        .section::<EngineSection>("engine")?
        .map(EngineSection::into_settings)
        .unwrap_or_default();
    let engine = Arc::new(MoaEngine::new(&engine_settings)?);
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| manifest.base_dir.join(".moa"));
    let metrics = Arc::new(Metrics::new());

    let mut stdout = std::io::stdout();
    let app = Arc::new(
        App::load(
            &engine,
            manifest,
            &runtime_config,
            &state_dir,
            metrics.clone(),
        )
        .await?,
    );
    let prepared = trigger_configs.prepare(&app)?;
    for component in app.components.values() {
        let dependencies: Vec<String> = app
            .manifest
            .manifest
            .components
            .get(&component.id)
            .map(|c| {
                c.dependencies
                    .iter()
                    .map(|d| format!("`{}`", d.name))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "Loaded component `{}` ({}, {} in {:.2}s{})",
            component.id,
            prepared.exports_of(&component.id),
            component.origin.as_str(),
            component.load_time.as_secs_f64(),
            if dependencies.is_empty() {
                String::new()
            } else {
                format!(", composed with {}", dependencies.join(", "))
            }
        );
    }

    // Old compile cache entries go in the background; this app's stay.
    {
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || engine.prune_cache());
    }
    let health = telemetry::Health::new(metrics.clone());
    let context = TriggerContext {
        engine: engine.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        listen: args.listen,
        drain: Duration::from_secs(args.drain_timeout),
        traces_exported,
        state_dir: state_dir.clone(),
    };
    let running = prepared.start(&app, &context).await?;
    for trigger in &running {
        for line in trigger.banner() {
            println!("{line}");
        }
    }
    if let Some(backend) = app.capabilities.llm.backend() {
        println!("Embeddings: {}", backend.describe());
    }
    if let Some(inference) = app.capabilities.llm.inference() {
        println!("LLM inference: {}", inference.endpoint());
    }
    if let Some(admin) = args.admin_listen {
        let admin_listener = tokio::net::TcpListener::bind(admin)
            .await
            .with_context(|| format!("cannot listen on {admin} for the admin endpoint: pick another with --admin-listen"))?;
        println!("Admin: http://{}/metrics", admin_listener.local_addr()?);
        tokio::spawn(moa::telemetry::serve_admin(
            admin_listener,
            metrics.clone(),
            health.clone(),
        ));
    }
    stdout.flush()?;

    tracing::info!(app = %app.manifest.manifest.name, "serving");
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            shutdown.cancel();
        }
    });
    let runs = running
        .into_iter()
        .map(|trigger| trigger.run(shutdown.clone()));
    futures::future::try_join_all(runs).await?;
    // Snapshot the vector indexes now, so the next start replays nothing.
    app.capabilities.vectors.close().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `[engine]` in the runtime config.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineSection {
    max_instances: Option<u32>,
    max_memory_mb: Option<u64>,
    cache_dir: Option<PathBuf>,
    /// `false` turns the compile cache off.
    cache: Option<bool>,
    keep_resident_kb: Option<usize>,
    decommit_batch_size: Option<usize>,
    /// Largest size of the compile cache, in MiB (least recently used entries go first).
    cache_max_mb: Option<u64>,
    /// Cache entries unused for this many days are removed.
    cache_max_age_days: Option<u64>,
}

impl EngineSection {
    fn into_settings(self) -> EngineSettings {
        let defaults = EngineSettings::default();
        EngineSettings {
            max_instances: self.max_instances.unwrap_or(defaults.max_instances),
            max_memory_mb: self.max_memory_mb.unwrap_or(defaults.max_memory_mb),
            cache_dir: match self.cache {
                Some(false) => None,
                _ => self.cache_dir.or(defaults.cache_dir),
            },
            keep_resident_bytes: self
                .keep_resident_kb
                .map_or(defaults.keep_resident_bytes, |kb| kb.saturating_mul(1024)),
            decommit_batch_size: self
                .decommit_batch_size
                .unwrap_or(defaults.decommit_batch_size),
            cache_max_bytes: self
                .cache_max_mb
                .map_or(defaults.cache_max_bytes, |mb| mb.saturating_mul(1 << 20)),
            cache_max_age: self
                .cache_max_age_days
                .map_or(defaults.cache_max_age, |days| {
                    Duration::from_secs(days.saturating_mul(24 * 3600))
                }),
        }
    }
}
