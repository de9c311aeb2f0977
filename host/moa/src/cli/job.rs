//! `moa job run <name> [--param k=v]...`: runs (or joins, or resumes) an execution of a batch job
//! from spin.toml's `[[trigger.job]]`, with a progress bar; `moa job status`: the executions, their
//! progress across every host, and the records they skipped.

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use moa::app::App;
use moa::engine::{EngineSettings, MoaEngine};
use moa::runtime_config::RuntimeConfig;
use moa::telemetry::{self, LogFormat, Metrics};
use moa::triggers::job::repository::{JobRepository, Status, execution_id};
use moa::triggers::job::runner::{JobRun, Outcome};
use moa::triggers::job::{JobMetrics, PreparedJobs, config};
use moa_manifest::HostKeys;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
pub struct JobArgs {
    #[command(subcommand)]
    pub command: JobCommand,
}

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Run a job to the end. Another `moa job run` of the same job and parameters (here or on
    /// another host sharing the job's store) joins the same execution; a failed or stopped one
    /// resumes from its last committed chunk.
    Run(RunArgs),
    /// Show a job's executions: status, progress over every host, records skipped.
    Status(StatusArgs),
}

/// Where the app is (as for `moa up`).
#[derive(Args, Debug)]
pub struct AppArgs {
    /// The app's manifest, or a directory holding spin.toml.
    #[arg(short = 'f', long = "from", value_name = "MANIFEST")]
    pub from: Option<PathBuf>,

    /// Runtime config (TOML) mapping capabilities to backends; the job's store must be the one
    /// the hosts use for it to be shared.
    #[arg(long, value_name = "FILE", env = "MOA_RUNTIME_CONFIG_FILE")]
    pub runtime_config_file: Option<PathBuf>,

    /// Where embedded backends keep data (default: `.moa` next to the manifest).
    #[arg(long, value_name = "DIR", env = "MOA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Log line format on stderr.
    #[arg(long, value_enum, default_value = "text", env = "MOA_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The job's `name` in `[[trigger.job]]`.
    pub name: String,

    /// A job parameter (repeatable); it overrides the trigger's `parameters`. The same job with
    /// the same parameters is the same execution.
    #[arg(long = "param", short = 'p', value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,

    /// Chunks in flight on this host (default: the trigger's `workers`).
    #[arg(long)]
    pub workers: Option<usize>,

    /// No progress bar (a line every 10 seconds instead).
    #[arg(long)]
    pub quiet: bool,

    /// Write this host's metrics (Prometheus text: moa_job_*, moa_llm_*, ...) to FILE when the
    /// run ends, for a node exporter's textfile collector or a benchmark.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,

    #[command(flatten)]
    pub app: AppArgs,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Only this job's executions.
    pub name: Option<String>,

    /// Also list up to this many skipped records of each execution, with their reasons.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "20")]
    pub skips: Option<u64>,

    #[command(flatten)]
    pub app: AppArgs,
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!(
            "`{text}` is not KEY=VALUE (e.g. --param input=data/reviews.jsonl.gz)"
        )),
    }
}

pub fn run(args: JobArgs) -> Result<()> {
    let format = match &args.command {
        JobCommand::Run(run) => run.app.log_format,
        JobCommand::Status(status) => status.app.log_format,
    };
    let _telemetry = telemetry::init(format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match args.command {
        JobCommand::Run(run) => runtime.block_on(run_job(run)),
        JobCommand::Status(status) => runtime.block_on(show_status(status)),
    }
}

/// The app loaded with its jobs prepared (no trigger starts).
struct LoadedJobs {
    app: Arc<App>,
    engine: Arc<MoaEngine>,
    metrics: Arc<Metrics>,
    jobs: PreparedJobs,
}

async fn load(args: &AppArgs) -> Result<LoadedJobs> {
    let manifest_path = super::manifest_path(args.from.as_deref())?;
    let manifest = moa_manifest::load(
        &manifest_path,
        HostKeys {
            component_keys: &moa::state::manifest_keys(),
            trigger_kinds: &moa::triggers::trigger_kinds(),
        },
    )?;
    let jobs = config::from_manifest(&manifest)?;
    if jobs.is_empty() {
        bail!(
            "{} has no [[trigger.job]]\n  help: add one, e.g.\n    [[trigger.job]]\n    name = \"import\"\n    component = \"importer\"\n    source = {{ type = \"jsonl\", path = \"${{input}}\" }}",
            manifest_path.display()
        );
    }
    let runtime_config = match &args.runtime_config_file {
        Some(path) => RuntimeConfig::load(path)?,
        None => RuntimeConfig::default(),
    };
    let engine = Arc::new(MoaEngine::new(&EngineSettings::default())?);
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| manifest.base_dir.join(".moa"));
    let metrics = Arc::new(Metrics::new());
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
    let jobs = PreparedJobs::prepare(jobs, &app)?;
    Ok(LoadedJobs {
        app,
        engine,
        metrics,
        jobs,
    })
}

fn known(jobs: &PreparedJobs, name: &str) -> Result<()> {
    if !jobs.jobs.contains_key(name) {
        let names: Vec<&str> = jobs.jobs.keys().map(String::as_str).collect();
        bail!(
            "no job named `{name}`\n  help: the app's jobs are: {}",
            names.join(", ")
        );
    }
    Ok(())
}

async fn run_job(args: RunArgs) -> Result<()> {
    let loaded = load(&args.app).await?;
    known(&loaded.jobs, &args.name)?;
    let mut prepared_job = &loaded.jobs.jobs[&args.name];
    let overridden;
    if let Some(workers) = args.workers {
        let mut job = prepared_job.job.clone();
        job.workers = workers.clamp(1, 64);
        overridden = moa::triggers::job::PreparedJob {
            job,
            component: prepared_job.component.clone(),
            pre: prepared_job.pre.clone(),
        };
        prepared_job = &overridden;
    }
    let parameters: BTreeMap<String, String> = args.params.into_iter().collect();
    let job_metrics = JobMetrics::register(&loaded.metrics);
    let run = Arc::new(
        JobRun::begin(
            &loaded.app,
            loaded.engine.clone(),
            prepared_job,
            parameters,
            job_metrics,
        )
        .await?,
    );
    let execution = run.execution.clone();
    println!(
        "Job `{}`: execution {} ({} records in {} ranges), host {}",
        execution.job, execution.id, execution.records, execution.ranges, run.host
    );
    let cancel = CancellationToken::new();
    tokio::spawn({
        let cancel = cancel.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("stopping after the chunks in flight; run the same command to resume");
                cancel.cancel();
            }
        }
    });
    let progress = tokio::spawn(show_progress(
        run.repository().clone(),
        execution.id.clone(),
        execution.records,
        args.quiet,
        cancel.child_token(),
    ));
    let started = std::time::Instant::now();
    let outcome = run.clone().run(cancel.clone()).await;
    progress.abort();
    let totals = run.repository().progress(&execution.id).await.ok();
    let (written, skipped) = totals.map(|p| (p.written, p.skipped)).unwrap_or_default();
    let seconds = started.elapsed().as_secs_f64();
    loaded.app.capabilities.vectors.close().await;
    if let Some(path) = &args.metrics_file {
        std::fs::write(path, loaded.metrics.render())
            .with_context(|| format!("cannot write the metrics to {}", path.display()))?;
    }
    match outcome? {
        Outcome::Completed => {
            println!(
                "Job `{}` COMPLETED: {written} records written, {skipped} skipped, in {seconds:.1} s; this host ran {} of {} ranges",
                execution.job,
                run.ranges_run(),
                execution.ranges
            );
            Ok(())
        }
        Outcome::Failed(message) => bail!(
            "job `{}` FAILED: {message}\n  {written} records written and {skipped} skipped before it stopped\n  help: fix the cause and run the same command: the execution resumes from its last committed chunk",
            execution.job
        ),
        Outcome::Stopped => bail!(
            "job `{}` stopped before the end ({written} records written)\n  help: run the same command to resume it",
            execution.job
        ),
    }
}

/// Redraws the bar (or prints a line every 10 s) from the repository: the progress of every host.
async fn show_progress(
    repository: JobRepository,
    execution: String,
    records: u64,
    quiet: bool,
    cancel: CancellationToken,
) {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(records)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} records {per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let Ok(progress) = repository.progress(&execution).await else {
            continue;
        };
        bar.set_position(progress.records_done);
        bar.set_message(format!(
            "written {} skipped {} hosts {}",
            progress.written,
            progress.skipped,
            progress.active_hosts.len()
        ));
        ticks += 1;
        if quiet && ticks.is_multiple_of(20) {
            eprintln!(
                "progress: {}/{records} records, {} written, {} skipped, {} ranges of {} done",
                progress.records_done,
                progress.written,
                progress.skipped,
                progress.ranges_done,
                progress.ranges_total
            );
        }
    }
    bar.finish_and_clear();
}

async fn show_status(args: StatusArgs) -> Result<()> {
    let loaded = load(&args.app).await?;
    let names: Vec<String> = match &args.name {
        Some(name) => {
            known(&loaded.jobs, name)?;
            vec![name.clone()]
        }
        None => loaded.jobs.jobs.keys().cloned().collect(),
    };
    for name in names {
        let job = &loaded.jobs.jobs[&name].job;
        let store = loaded
            .app
            .capabilities
            .documents
            .store(&job.store)
            .with_context(|| format!("document store `{}` is not configured", job.store))?;
        let repository = JobRepository::open(store.backend.clone(), &job.store)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let executions = repository
            .executions(Some(&name))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if executions.is_empty() {
            println!(
                "{name}: no executions (next: {})",
                execution_id(&name, &job.parameters)
            );
            continue;
        }
        for execution in executions {
            let progress = repository
                .progress(&execution.id)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let params: Vec<String> = execution
                .parameters
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!(
                "{name} {} {:<9} {}/{} records  written {}  skipped {}  ranges {}/{}  hosts {}  [{}]",
                execution.id,
                execution.status.as_str(),
                progress.records_done,
                execution.records,
                progress.written,
                progress.skipped,
                progress.ranges_done,
                progress.ranges_total,
                progress.active_hosts.len(),
                params.join(" ")
            );
            if execution.status == Status::Failed
                && let Some(message) = &execution.message
            {
                println!("  failed: {message}");
            }
            if let Some(limit) = args.skips {
                for skip in repository
                    .skips(&execution.id, limit)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                {
                    println!("  skipped record {}: {}", skip.record + 1, skip.reason);
                }
            }
        }
    }
    Ok(())
}
