//! Triggers turn outside events into component calls, one folder per kind (HTTP requests; Kafka,
//! Redis Streams and the embedded log into `moa:messaging/handler`; cron schedules; batch jobs;
//! Spin's Redis pub/sub), and the registry.
//!
//! A trigger kind implements [`Trigger`]: it owns its `[[trigger.<kind>]]` section (read and
//! checked before anything compiles), finds its export in every component it calls once they are
//! compiled, and runs. [`retry`] is the retry/backoff/dead-letter policy any trigger reuses.

pub mod cron;
pub mod events;
pub mod http;
pub mod job;
pub mod redis_pubsub;
pub mod retry;

use crate::app::App;
use crate::engine::MoaEngine;
use crate::telemetry::{Health, Metrics};
use anyhow::Result;
use moa_manifest::{LoadedManifest, ManifestError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a trigger gets from the host when it starts.
pub struct TriggerContext {
    pub engine: Arc<MoaEngine>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Where HTTP is served (`moa up --listen`).
    pub listen: SocketAddr,
    /// How long in-flight work may finish after a shutdown signal.
    pub drain: Duration,
    /// Whether spans are exported (OTLP); without it no per-request span is built.
    pub traces_exported: bool,
    /// The host's state directory (`moa up --state-dir`), for what triggers keep on disk.
    pub state_dir: std::path::PathBuf,
}

/// One trigger kind.
pub trait Trigger: Sized + 'static {
    /// The `[[trigger.<kind>]]` tables it reads.
    const KINDS: &'static [&'static str];
    /// Its checked manifest section.
    type Config: Send + Sync + 'static;
    /// Its section plus the pre-instantiated export of every component it calls.
    type Prepared: Send + Sync + 'static;

    /// Before compiling: read and check its entries (errors name the line and the fix).
    fn configure(app: &LoadedManifest) -> Result<Self::Config, ManifestError>;

    /// After compiling: check that every component it calls has its export.
    fn prepare(config: Self::Config, app: &App) -> Result<Self::Prepared>;

    /// What component `id` exports for this trigger, for `moa up`'s listing (`None`: not called).
    fn export_of(prepared: &Self::Prepared, id: &str) -> Option<&'static str>;

    /// Starts it (binds, connects); `None` when the app has no entry of its kinds.
    fn start(
        prepared: Self::Prepared,
        app: &Arc<App>,
        cx: &TriggerContext,
    ) -> impl Future<Output = Result<Option<Box<dyn RunningTrigger>>>>;
}

/// A started trigger.
#[async_trait::async_trait]
pub trait RunningTrigger: Send {
    /// Lines for `moa up`'s start-up banner.
    fn banner(&self) -> Vec<String>;
    /// Runs until `shutdown` fires, then lets in-flight work finish (up to the drain timeout).
    async fn run(self: Box<Self>, shutdown: CancellationToken) -> Result<()>;
}

/// Composes the registered trigger kinds: their sections, preparation and start.
macro_rules! register_triggers {
    ($($field:ident: $trigger:ty),* $(,)?) => {
        /// Every trigger kind's checked manifest section.
        pub struct TriggerConfigs {
            $($field: <$trigger as Trigger>::Config,)*
        }

        /// Every trigger kind, ready to start.
        pub struct PreparedTriggers {
            $($field: <$trigger as Trigger>::Prepared,)*
        }

        /// Every `[[trigger.<kind>]]` kind moa runs.
        pub fn trigger_kinds() -> Vec<&'static str> {
            let mut kinds = Vec::new();
            $(kinds.extend_from_slice(<$trigger as Trigger>::KINDS);)*
            kinds
        }

        impl TriggerConfigs {
            pub fn from_manifest(app: &LoadedManifest) -> Result<Self, ManifestError> {
                Ok(TriggerConfigs {
                    $($field: <$trigger as Trigger>::configure(app)?,)*
                })
            }

            pub fn prepare(self, app: &App) -> Result<PreparedTriggers> {
                Ok(PreparedTriggers {
                    $($field: <$trigger as Trigger>::prepare(self.$field, app)?,)*
                })
            }
        }

        impl PreparedTriggers {
            /// What component `id` exports that moa calls, e.g. `wasi:http@0.3 + moa:messaging/handler`.
            pub fn exports_of(&self, id: &str) -> String {
                let exports: Vec<&str> = [
                    $(<$trigger as Trigger>::export_of(&self.$field, id),)*
                ]
                .into_iter()
                .flatten()
                .collect();
                exports.join(" + ")
            }

            /// Starts every trigger kind the app uses, in registration order.
            pub async fn start(
                self,
                app: &Arc<App>,
                cx: &TriggerContext,
            ) -> Result<Vec<Box<dyn RunningTrigger>>> {
                let mut running = Vec::new();
                $(
                    if let Some(trigger) = <$trigger as Trigger>::start(self.$field, app, cx).await? {
                        running.push(trigger);
                    }
                )*
                Ok(running)
            }
        }
    };
}

// The registry: one line per trigger kind. Adding one is its folder here plus one line.
register_triggers! {
    http: http::HttpTrigger,
    events: events::EventTriggers,
    cron: cron::CronTriggers,
    job: job::JobTriggers,
    redis: redis_pubsub::RedisTriggers,
}
