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
    /// The jobs that entries with `job = "..."` start.
    jobs: Arc<super::job::PreparedJobs>,
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
        let named: Vec<&str> = triggers.iter().filter_map(|t| t.job.as_deref()).collect();
        let jobs = super::job::config::from_manifest(&app.manifest)?
            .into_iter()
            .filter(|job| named.contains(&job.name.as_str()))
            .collect();
        let jobs = super::job::PreparedJobs::prepare(jobs, app)?;
        for trigger in &triggers {
            if let Some(name) = &trigger.job {
                let Some(job) = jobs.jobs.get(name) else {
                    anyhow::bail!(
                        "{}:{}: [[trigger.cron]] names job `{name}`, which no [[trigger.job]] defines\n  help: the app's jobs are named by their `name` (default: their component)",
                        app.manifest.path.display(),
                        trigger.position.line
                    );
                };
                if job.component.id != trigger.component {
                    anyhow::bail!(
                        "{}:{}: [[trigger.cron]] starts job `{name}`, whose component is `{}`, not `{}`\n  help: write component = \"{}\"",
                        app.manifest.path.display(),
                        trigger.position.line,
                        job.component.id,
                        trigger.component,
                        job.component.id
                    );
                }
                continue;
            }
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
        Ok(PreparedCron {
            triggers,
            handlers,
            jobs: Arc::new(jobs),
        })
    }

    fn export_of(prepared: &PreparedCron, id: &str) -> Option<&'static str> {
        prepared
            .handlers
            .contains_key(id)
            .then_some("fermyon:spin-cron")
    }

    async fn start(
        prepared: PreparedCron,
        app: &Arc<App>,
        cx: &TriggerContext,
    ) -> Result<Option<Box<dyn RunningTrigger>>> {
        if prepared.triggers.is_empty() {
            return Ok(None);
        }
        let job_metrics =
            (!prepared.jobs.jobs.is_empty()).then(|| super::job::JobMetrics::register(&cx.metrics));
        let mut schedules = Vec::new();
        for trigger in prepared.triggers {
            let target = match &trigger.job {
                Some(name) => match (prepared.jobs.jobs.get(name), &job_metrics) {
                    (Some(job), Some(metrics)) => Target::Job {
                        app: app.clone(),
                        job: name.clone(),
                        jobs: prepared.jobs.clone(),
                        metrics: metrics.clone(),
                        component: job.component.clone(),
                    },
                    _ => continue,
                },
                None => match prepared.handlers.get(&trigger.component) {
                    Some((component, handler)) => Target::Component {
                        component: component.clone(),
                        handler: handler.clone(),
                    },
                    None => continue,
                },
            };
            schedules.push(Schedule {
                trigger,
                target,
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

/// What a scheduled time runs.
enum Target {
    /// The component's `handle-cron-event`.
    Component {
        component: Arc<AppComponent>,
        handler: Arc<SpinCronPre<HostState>>,
    },
    /// An execution of a job, with the fire time as its `scheduled_at` parameter.
    Job {
        app: Arc<App>,
        job: String,
        jobs: Arc<super::job::PreparedJobs>,
        metrics: Arc<super::job::JobMetrics>,
        component: Arc<AppComponent>,
    },
}

/// One entry's schedule with what a run needs.
struct Schedule {
    trigger: CronTrigger,
    target: Target,
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
        lines.extend(self.schedules.iter().map(|s| match &s.trigger.job {
            Some(job) => format!("  job {job} on \"{}\"", s.trigger.expression),
            None => format!("  {} on \"{}\"", s.trigger.component, s.trigger.expression),
        }));
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
                    component = self.component().id,
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
            self.run_once(timestamp, &shutdown).await;
        }
    }

    /// One run on a fresh instance under the component's deadline.
    fn component(&self) -> &Arc<AppComponent> {
        match &self.target {
            Target::Component { component, .. } | Target::Job { component, .. } => component,
        }
    }

    async fn run_once(&self, timestamp: u64, shutdown: &CancellationToken) {
        let started = Instant::now();
        let id = format!("cron-{}-{timestamp}", self.component().id);
        let result = match &self.target {
            Target::Component { .. } => self.call(&id, timestamp).await,
            Target::Job {
                app,
                job,
                jobs,
                metrics,
                ..
            } => run_job(app, &self.engine, jobs, job, metrics, timestamp, shutdown).await,
        };
        let outcome = match result {
            Ok(()) => RunOutcome::Ok,
            Err((outcome, why)) => {
                tracing::warn!(
                    component = self.component().id,
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
            .cron_run(&self.component().id, outcome.as_str(), started.elapsed());
    }

    async fn call(&self, id: &str, timestamp: u64) -> Result<(), (RunOutcome, String)> {
        let timeout = self.component().request_timeout;
        let trapped = |trap: wasmtime::Error| {
            if matches!(
                trap.downcast_ref::<wasmtime::Trap>(),
                Some(wasmtime::Trap::Interrupt)
            ) {
                self.metrics.deadline_hit(&self.component().id);
                (
                    RunOutcome::Deadline,
                    format!("deadline of {} ms exceeded", timeout.as_millis()),
                )
            } else {
                self.metrics.trapped(&self.component().id);
                (RunOutcome::Trap, format!("component trapped: {trap:#}"))
            }
        };
        let Target::Component { component, handler } = &self.target else {
            return Err((RunOutcome::Error, "not a component entry".into()));
        };
        let mut store = component
            .new_store(&self.engine, Invocation::new(id, timeout))
            .map_err(|e| {
                (
                    RunOutcome::Trap,
                    format!("cannot create an instance: {e:#}"),
                )
            })?;
        let started = Instant::now();
        let handler = handler
            .instantiate_async(&mut store)
            .await
            .map_err(trapped)?;
        self.metrics
            .instantiated(&self.component().id, started.elapsed());
        let call = handler.call_handle_cron_event(&mut store, Metadata { timestamp });
        match tokio::time::timeout(timeout, call).await {
            Err(_) => {
                self.metrics.deadline_hit(&self.component().id);
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

/// A scheduled execution of a job: its parameters are the job's defaults plus `scheduled_at`
/// (the fire time, seconds since the epoch), so each time is its own execution.
async fn run_job(
    app: &Arc<App>,
    engine: &Arc<MoaEngine>,
    jobs: &super::job::PreparedJobs,
    name: &str,
    metrics: &Arc<super::job::JobMetrics>,
    timestamp: u64,
    shutdown: &CancellationToken,
) -> Result<(), (RunOutcome, String)> {
    use super::job::runner::{JobRun, Outcome};
    let Some(prepared) = jobs.jobs.get(name) else {
        return Err((RunOutcome::Error, format!("job `{name}` is not prepared")));
    };
    let parameters = [("scheduled_at".to_string(), timestamp.to_string())].into();
    let run = JobRun::begin(app, engine.clone(), prepared, parameters, metrics.clone())
        .await
        .map_err(|e| (RunOutcome::Error, format!("{e:#}")))?;
    tracing::info!(
        job = name,
        execution = run.execution.id,
        records = run.execution.records,
        "scheduled job started"
    );
    let outcome = Arc::new(run)
        .run(shutdown.child_token())
        .await
        .map_err(|e| (RunOutcome::Error, format!("{e:#}")))?;
    match outcome {
        Outcome::Completed => {
            tracing::info!(job = name, "scheduled job completed");
            Ok(())
        }
        Outcome::Failed(message) => {
            Err((RunOutcome::Error, format!("job `{name}` failed: {message}")))
        }
        Outcome::Stopped => Err((
            RunOutcome::Error,
            format!(
                "job `{name}` stopped by the shutdown; resume it with `moa job run {name} --param scheduled_at={timestamp}`"
            ),
        )),
    }
}
