//! The cron trigger: `[[trigger.cron]]` calls a component's `handle-cron-event` (Spin's
//! `fermyon:spin-cron` world) on a schedule, one run at a time per entry, each under its limits.
//!
//! A run is a fresh instance with the component's deadline and memory limit. A failed run (an
//! error, a trap, the deadline) is logged and counted; the next scheduled time is its retry.
//! Times missed while a run was still going are skipped, never queued.

pub mod config;

use super::{RunningTrigger, Trigger, TriggerContext};
use crate::app::{App, AppComponent};
use crate::engine::MoaEngine;
use crate::invocation::Invocation;
use crate::state::HostState;
use crate::telemetry::Metrics;
use anyhow::Result;
use config::CronTrigger;
use moa_manifest::{LoadedManifest, ManifestError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "fermyon:spin-cron/spin-cron",
        exports: { default: async },
    });
}

use bindings::SpinCronPre;
use bindings::fermyon::spin_cron::cron_types::{Error as CronError, Metadata};

/// `[[trigger.cron]]`: scheduled calls of `handle-cron-event`.
pub struct CronTriggers;

/// The cron entries with the pre-instantiated export of each component they call.
pub struct PreparedCron {
    triggers: Vec<CronTrigger>,
    handlers: BTreeMap<String, (Arc<AppComponent>, Arc<SpinCronPre<HostState>>)>,
}

impl Trigger for CronTriggers {
    const KINDS: &'static [&'static str] = &["cron"];
    type Config = Vec<CronTrigger>;
    type Prepared = PreparedCron;

    fn configure(app: &LoadedManifest) -> Result<Vec<CronTrigger>, ManifestError> {
        config::from_manifest(app)
    }

    fn prepare(triggers: Vec<CronTrigger>, app: &App) -> Result<PreparedCron> {
        let mut handlers = BTreeMap::new();
        for trigger in &triggers {
            let component = app.component(&trigger.component)?;
            if handlers.contains_key(&component.id) {
                continue;
            }
            let pre = SpinCronPre::new(component.pre.clone()).map_err(|_| {
                anyhow::anyhow!(
                    "component `{}` ({}) is named by a cron trigger but does not export handle-cron-event (fermyon:spin-cron@2.0.0)\n  help: build it with spin-cron-sdk's #[cron_component], or include the world fermyon:spin-cron/spin-cron@2.0.0 (wit/deps/spin-cron@2.0.0)",
                    component.id,
                    component.source.display()
                )
            })?;
            handlers.insert(component.id.clone(), (component.clone(), Arc::new(pre)));
        }
        Ok(PreparedCron { triggers, handlers })
    }

    fn export_of(prepared: &PreparedCron, id: &str) -> Option<&'static str> {
        prepared
            .handlers
            .contains_key(id)
            .then_some("fermyon:spin-cron")
    }

    async fn start(
        prepared: PreparedCron,
        _app: &Arc<App>,
        cx: &TriggerContext,
    ) -> Result<Option<Box<dyn RunningTrigger>>> {
        if prepared.triggers.is_empty() {
            return Ok(None);
        }
        let mut schedules = Vec::new();
        for trigger in prepared.triggers {
            let Some((component, handler)) = prepared.handlers.get(&trigger.component) else {
                continue;
            };
            schedules.push(Schedule {
                trigger,
                component: component.clone(),
                handler: handler.clone(),
                engine: cx.engine.clone(),
                metrics: cx.metrics.clone(),
            });
        }
        Ok(Some(Box::new(RunningCron {
            schedules,
            drain: cx.drain,
        })))
    }
}

/// One entry's schedule with what a run needs.
struct Schedule {
    trigger: CronTrigger,
    component: Arc<AppComponent>,
    handler: Arc<SpinCronPre<HostState>>,
    engine: Arc<MoaEngine>,
    metrics: Arc<Metrics>,
}

struct RunningCron {
    schedules: Vec<Schedule>,
    drain: Duration,
}

#[async_trait::async_trait]
impl RunningTrigger for RunningCron {
    fn banner(&self) -> Vec<String> {
        let mut lines = vec!["Cron triggers:".to_string()];
        lines.extend(
            self.schedules
                .iter()
                .map(|s| format!("  {} on \"{}\"", s.trigger.component, s.trigger.expression)),
        );
        lines
    }

    async fn run(self: Box<Self>, shutdown: CancellationToken) -> Result<()> {
        let mut tasks = JoinSet::new();
        for schedule in self.schedules {
            tasks.spawn(schedule.run(shutdown.clone()));
        }
        shutdown.cancelled().await;
        // A run in progress finishes (it is bounded by its deadline), up to the drain timeout.
        let drained = tokio::time::timeout(self.drain, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("cron runs still going after the drain timeout were stopped");
            tasks.abort_all();
        }
        Ok(())
    }
}

/// How one run ended, as counted in `moa_cron_runs_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Ok,
    Error,
    Trap,
    Deadline,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Ok => "ok",
            RunOutcome::Error => "error",
            RunOutcome::Trap => "trap",
            RunOutcome::Deadline => "deadline",
        }
    }
}

impl Schedule {
    async fn run(self, shutdown: CancellationToken) {
        loop {
            let Some(next) = self.trigger.schedule.upcoming(chrono::Utc).next() else {
                tracing::info!(
                    component = self.component.id,
                    schedule = self.trigger.expression,
                    "cron schedule has no further times"
                );
                return;
            };
            let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let timestamp = u64::try_from(next.timestamp()).unwrap_or_default();
            self.run_once(timestamp).await;
        }
    }

    /// One run on a fresh instance under the component's deadline.
    async fn run_once(&self, timestamp: u64) {
        let started = Instant::now();
        let id = format!("cron-{}-{timestamp}", self.component.id);
        let outcome = match self.call(&id, timestamp).await {
            Ok(()) => RunOutcome::Ok,
            Err((outcome, why)) => {
                tracing::warn!(
                    component = self.component.id,
                    request_id = id,
                    schedule = self.trigger.expression,
                    outcome = outcome.as_str(),
                    error = why,
                    "cron run failed; the next scheduled time runs it again"
                );
                outcome
            }
        };
        self.metrics
            .cron_run(&self.component.id, outcome.as_str(), started.elapsed());
    }

    async fn call(&self, id: &str, timestamp: u64) -> Result<(), (RunOutcome, String)> {
        let timeout = self.component.request_timeout;
        let trapped = |trap: wasmtime::Error| {
            if matches!(
                trap.downcast_ref::<wasmtime::Trap>(),
                Some(wasmtime::Trap::Interrupt)
            ) {
                self.metrics.deadline_hit(&self.component.id);
                (
                    RunOutcome::Deadline,
                    format!("deadline of {} ms exceeded", timeout.as_millis()),
                )
            } else {
                self.metrics.trapped(&self.component.id);
                (RunOutcome::Trap, format!("component trapped: {trap:#}"))
            }
        };
        let mut store = self
            .component
            .new_store(&self.engine, Invocation::new(id, timeout))
            .map_err(|e| {
                (
                    RunOutcome::Trap,
                    format!("cannot create an instance: {e:#}"),
                )
            })?;
        let started = Instant::now();
        let handler = self
            .handler
            .instantiate_async(&mut store)
            .await
            .map_err(trapped)?;
        self.metrics
            .instantiated(&self.component.id, started.elapsed());
        let call = handler.call_handle_cron_event(&mut store, Metadata { timestamp });
        match tokio::time::timeout(timeout, call).await {
            Err(_) => {
                self.metrics.deadline_hit(&self.component.id);
                Err((
                    RunOutcome::Deadline,
                    format!("deadline of {} ms exceeded", timeout.as_millis()),
                ))
            }
            Ok(Err(trap)) => Err(trapped(trap)),
            Ok(Ok(Err(CronError::Other(message)))) => Err((RunOutcome::Error, message)),
            Ok(Ok(Ok(()))) => Ok(()),
        }
    }
}
