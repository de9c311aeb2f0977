//! The job trigger: `[[trigger.job]]` names batch jobs (Spring Batch's chunk-oriented steps) that
//! `moa job run <name>` runs: the host reads the job's source in chunks and calls the component's
//! `moa:jobs/chunk-processor` export for each, inside a documents transaction it commits with the
//! chunk's checkpoint; hosts split a job by claiming ranges of the source.
//!
//! Jobs do not start by themselves under `moa up`; `moa job run` (or, later, a cron entry) starts
//! an execution, and every process running the same job with the same parameters joins it.

pub mod config;
pub mod repository;
pub mod runner;
pub mod source;

use super::{RunningTrigger, Trigger, TriggerContext};
use crate::app::{App, AppComponent};
use crate::state::HostState;
use anyhow::Result;
use config::JobTrigger;
use moa_manifest::{LoadedManifest, ManifestError};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:jobs/job-component",
        exports: { default: async },
        with: {
            "moa:documents/documents": crate::capabilities::documents::bindings::moa::documents::documents,
            "moa:documents/types": crate::capabilities::documents::bindings::moa::documents::types,
            "moa:messaging/types": crate::capabilities::documents::bindings::moa::messaging::types,
        },
    });
}

pub use bindings::JobComponentPre;

/// `[[trigger.job]]`: batch jobs for `moa job run`.
pub struct JobTriggers;

/// A job with the pre-instantiated export of its component.
pub struct PreparedJob {
    pub job: JobTrigger,
    pub component: Arc<AppComponent>,
    pub pre: Arc<JobComponentPre<HostState>>,
}

/// Every job of the app, by name.
#[derive(Default)]
pub struct PreparedJobs {
    pub jobs: BTreeMap<String, PreparedJob>,
}

impl PreparedJobs {
    /// Checks and prepares the app's jobs (what `moa job` uses without the other triggers).
    pub fn prepare(jobs: Vec<JobTrigger>, app: &App) -> Result<Self> {
        let mut prepared = BTreeMap::new();
        for job in jobs {
            let component = app.component(&job.component)?;
            let pre = JobComponentPre::new(component.pre.clone()).map_err(|_| {
                anyhow::anyhow!(
                    "component `{}` ({}) is named by job `{}` but does not export moa:jobs/chunk-processor@0.1.0\n  help: implement the world moa:jobs/job-component (wit/deps/moa-jobs@0.1.0)",
                    component.id,
                    component.source.display(),
                    job.name
                )
            })?;
            if app.capabilities.documents.store(&job.store).is_none() {
                anyhow::bail!(
                    "job `{}` keeps its repository in document store `{}`, which no component lists\n  help: add `document_stores = [\"{}\"]` to component `{}`",
                    job.name,
                    job.store,
                    job.store,
                    component.id
                );
            }
            prepared.insert(
                job.name.clone(),
                PreparedJob {
                    job,
                    component: component.clone(),
                    pre: Arc::new(pre),
                },
            );
        }
        Ok(PreparedJobs { jobs: prepared })
    }
}

impl Trigger for JobTriggers {
    const KINDS: &'static [&'static str] = &["job"];
    type Config = Vec<JobTrigger>;
    type Prepared = PreparedJobs;

    fn configure(app: &LoadedManifest) -> Result<Vec<JobTrigger>, ManifestError> {
        config::from_manifest(app)
    }

    fn prepare(jobs: Vec<JobTrigger>, app: &App) -> Result<PreparedJobs> {
        PreparedJobs::prepare(jobs, app)
    }

    fn export_of(prepared: &PreparedJobs, id: &str) -> Option<&'static str> {
        prepared
            .jobs
            .values()
            .any(|j| j.component.id == id)
            .then_some("moa:jobs/chunk-processor")
    }

    async fn start(
        _prepared: PreparedJobs,
        _app: &Arc<App>,
        _cx: &TriggerContext,
    ) -> Result<Option<Box<dyn RunningTrigger>>> {
        Ok(None)
    }
}

/// `moa_job_*` series.
pub struct JobMetrics {
    records: Family<JobOutcome, Counter>,
    chunks: Family<JobOutcome, Counter>,
    chunk_seconds: Family<JobLabel, Histogram, fn() -> Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct JobOutcome {
    job: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct JobLabel {
    job: String,
}

impl JobMetrics {
    /// Creates the series and adds them to the host's /metrics.
    pub fn register(metrics: &crate::telemetry::Metrics) -> Arc<Self> {
        let job = JobMetrics {
            records: Family::default(),
            chunks: Family::default(),
            chunk_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
        };
        let mut registry = Registry::default();
        registry.register(
            "moa_job_records",
            "Source records a job processed, by outcome (written, skipped)",
            job.records.clone(),
        );
        registry.register(
            "moa_job_chunks",
            "Chunks a job ran, by outcome (ok, scanned, failed)",
            job.chunks.clone(),
        );
        registry.register(
            "moa_job_chunk_seconds",
            "Time per committed chunk",
            job.chunk_seconds.clone(),
        );
        metrics.add_source(Arc::new(registry));
        Arc::new(job)
    }

    fn records(&self, job: &str, written: u64, skipped: u64) {
        for (outcome, n) in [("written", written), ("skipped", skipped)] {
            if n > 0 {
                self.records
                    .get_or_create(&JobOutcome {
                        job: job.to_string(),
                        outcome,
                    })
                    .inc_by(n);
            }
        }
    }

    fn chunk(&self, job: &str, outcome: &'static str, elapsed: Duration) {
        self.chunks
            .get_or_create(&JobOutcome {
                job: job.to_string(),
                outcome,
            })
            .inc();
        if outcome == "ok" {
            self.chunk_seconds
                .get_or_create(&JobLabel {
                    job: job.to_string(),
                })
                .observe(elapsed.as_secs_f64());
        }
    }
}
