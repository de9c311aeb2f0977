//! Runs one execution of a job on this host: joins (or creates) the execution, claims ranges,
//! and runs each range chunk by chunk. A chunk is one call of the component's `process-chunk` on a
//! fresh instance, inside a documents transaction the host commits with the chunk's checkpoint.
//!
//! Fault tolerance as Spring Batch's: a transient chunk error is retried (`retry_limit`, with
//! backoff); a chunk that fails otherwise (an error, a trap, the deadline) is scanned record by
//! record, and the records that fail alone are skipped with their reason, up to `skip_limit`.

use super::config::JobTrigger;
use super::repository::{
    Begin, Execution, JobRepository, Range, SkippedRecord, StartError, Status,
};
use super::source::{JsonLinesSource, Line};
use super::{JobComponentPre, JobMetrics, bindings};
use crate::app::{App, AppComponent};
use crate::capabilities::documents::{
    DocumentError, DocumentStore, DocumentTransaction, Lent, OpenTransaction,
};
use crate::engine::MoaEngine;
use crate::invocation::Invocation;
use crate::state::HostState;
use anyhow::{Context as _, Result};
use bindings::moa::jobs::types::{ChunkError, JobContext};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use wasmtime::component::Resource;

/// How an execution run by this host ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed,
    Failed(String),
    /// Shut down before the end; running the job again resumes it.
    Stopped,
}

/// Why one chunk attempt did not commit.
#[derive(Debug)]
enum ChunkFailure {
    /// Retry as it is.
    Transient(String),
    /// Scan it record by record.
    Failed(String),
    /// Fail the execution now (the component says no record can succeed).
    Fatal(String),
    /// The range is no longer this host's (its lease ran out and another host took it).
    Lost,
}

/// What one job execution on this host needs.
pub struct JobRun {
    pub job: JobTrigger,
    component: Arc<AppComponent>,
    pre: Arc<JobComponentPre<HostState>>,
    engine: Arc<MoaEngine>,
    documents: Arc<DocumentStore>,
    repository: JobRepository,
    source: JsonLinesSource,
    pub execution: Execution,
    pub host: String,
    metrics: Arc<JobMetrics>,
    /// Ranges this host finished.
    ranges_run: std::sync::atomic::AtomicU64,
}

/// A name for this process in claims: host name, process id and a random suffix.
pub fn host_id() -> String {
    let name = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{name}-{}-{}", std::process::id(), &suffix[..6])
}

impl JobRun {
    /// Joins or creates the execution of `job` with `parameters` (counting the source and making
    /// the ranges when this host is first).
    pub async fn begin(
        app: &App,
        engine: Arc<MoaEngine>,
        prepared: &super::PreparedJob,
        parameters: BTreeMap<String, String>,
        metrics: Arc<JobMetrics>,
    ) -> Result<Self> {
        let job = prepared.job.clone();
        let documents = app
            .capabilities
            .documents
            .store(&job.store)
            .cloned()
            .with_context(|| {
                format!(
                    "job `{}`: document store `{}` is not configured",
                    job.name, job.store
                )
            })?;
        let repository = JobRepository::open(documents.backend.clone(), &job.store)
            .await
            .map_err(|e| anyhow::anyhow!("job `{}`: cannot open its repository: {e}", job.name))?;
        let mut all = job.parameters.clone();
        all.extend(parameters);
        let source_path = job.source_path(&app.manifest.base_dir, &all)?;
        let source = JsonLinesSource::open(&source_path)?;
        let host = host_id();
        let execution = loop {
            match repository.begin(&job.name, &all, &host, job.lease).await {
                Ok(Begin::Join(execution)) => break execution,
                Ok(Begin::Create(execution)) => {
                    let counting = source.clone();
                    let started = Instant::now();
                    let records = tokio::task::spawn_blocking(move || counting.count())
                        .await
                        .context("counting the source panicked")?
                        .with_context(|| format!("cannot read {}", source_path.display()))?;
                    tracing::info!(
                        job = job.name,
                        execution = execution.id,
                        records,
                        seconds = started.elapsed().as_secs_f64(),
                        "job source counted"
                    );
                    let range_records = (job.chunk_size * job.range_chunks) as u64;
                    let created = repository
                        .create_ranges(&execution.id, &host, records, range_records)
                        .await
                        .map_err(|e| anyhow::anyhow!("job `{}`: {e}", job.name))?;
                    if created {
                        break Execution {
                            status: Status::Started,
                            records,
                            ranges: records.div_ceil(range_records),
                            ..execution
                        };
                    }
                }
                Ok(Begin::Wait) => tokio::time::sleep(Duration::from_millis(300)).await,
                Err(StartError::AlreadyCompleted { job, id, now }) => {
                    anyhow::bail!(StartError::AlreadyCompleted { job, id, now })
                }
                Err(other) => anyhow::bail!("job `{}`: {other}", job.name),
            }
        };
        Ok(JobRun {
            component: prepared.component.clone(),
            pre: prepared.pre.clone(),
            engine,
            documents,
            repository,
            source,
            execution,
            host,
            metrics,
            ranges_run: Default::default(),
            job,
        })
    }

    pub fn repository(&self) -> &JobRepository {
        &self.repository
    }

    /// How many ranges this host ran to their end.
    pub fn ranges_run(&self) -> u64 {
        self.ranges_run.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs ranges on `workers` tasks until every range is done (by any host), the execution
    /// fails, or `cancel` fires.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<Outcome> {
        let mut workers = tokio::task::JoinSet::new();
        for worker in 0..self.job.workers {
            let run = self.clone();
            let cancel = cancel.clone();
            workers.spawn(async move { run.work(worker, cancel).await });
        }
        let mut failure = None;
        while let Some(joined) = workers.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    failure.get_or_insert(format!("{error:#}"));
                    cancel.cancel();
                }
                Err(panic) => {
                    failure.get_or_insert(format!("a worker panicked: {panic}"));
                    cancel.cancel();
                }
            }
        }
        let store_error = |e: DocumentError| anyhow::anyhow!("job repository: {e}");
        if let Some(message) = failure {
            self.repository
                .finish(&self.execution.id, Status::Failed, Some(&message))
                .await
                .map_err(store_error)?;
            return Ok(Outcome::Failed(message));
        }
        if let Some(execution) = self
            .repository
            .execution(&self.execution.id)
            .await
            .map_err(store_error)?
            && execution.status == Status::Failed
        {
            return Ok(Outcome::Failed(execution.message.unwrap_or_default()));
        }
        if cancel.is_cancelled() {
            return Ok(Outcome::Stopped);
        }
        let progress = self
            .repository
            .progress(&self.execution.id)
            .await
            .map_err(store_error)?;
        if progress.ranges_done == progress.ranges_total {
            self.repository
                .finish(&self.execution.id, Status::Completed, None)
                .await
                .map_err(store_error)?;
            return Ok(Outcome::Completed);
        }
        Ok(Outcome::Stopped)
    }

    /// One worker: claim, run, repeat; when nothing is claimable but ranges are still held by
    /// other hosts, wait for them to finish or for their leases to run out.
    async fn work(&self, worker: usize, cancel: CancellationToken) -> Result<()> {
        let store_error = |e: DocumentError| anyhow::anyhow!("job repository: {e}");
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            if let Some(execution) = self
                .repository
                .execution(&self.execution.id)
                .await
                .map_err(store_error)?
                && execution.status != Status::Started
            {
                return Ok(());
            }
            match self
                .repository
                .claim(&self.execution.id, &self.host, self.job.lease)
                .await
                .map_err(store_error)?
            {
                Some(range) => {
                    tracing::debug!(
                        job = self.job.name,
                        worker,
                        range = range.n,
                        next = range.next,
                        "range claimed"
                    );
                    self.run_range(range, &cancel).await?;
                }
                None => {
                    let progress = self
                        .repository
                        .progress(&self.execution.id)
                        .await
                        .map_err(store_error)?;
                    if progress.ranges_done == progress.ranges_total {
                        return Ok(());
                    }
                    // Held by other hosts (or this one's other workers): look again later.
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    async fn run_range(&self, range: Range, cancel: &CancellationToken) -> Result<()> {
        let source = self.source.clone();
        let next = range.next;
        let mut reader = tokio::task::spawn_blocking(move || source.reader_at(next))
            .await
            .context("reading the source panicked")?
            .context("cannot read the job's source")?;
        let mut position = range.next;
        while position < range.end {
            if cancel.is_cancelled() {
                let _ = self.repository.release(&range, &self.host).await;
                return Ok(());
            }
            let chunk_size = self.job.chunk_size;
            let end = range.end;
            let (lines, after, back) = tokio::task::spawn_blocking(move || {
                let lines = reader.read(chunk_size, end);
                let after = reader.position();
                (lines, after, reader)
            })
            .await
            .context("reading the source panicked")?;
            reader = back;
            let lines = lines.context("cannot read the job's source")?;
            // Nothing left before `end` (or the file is shorter than when it was counted): the
            // range ends here.
            let to = if lines.is_empty() { end } else { after };
            match self.run_chunk(&range, lines, position, to).await? {
                true => position = to,
                false => {
                    tracing::warn!(
                        job = self.job.name,
                        range = range.n,
                        "range taken over by another host; leaving it"
                    );
                    return Ok(());
                }
            }
        }
        self.ranges_run
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// One chunk `[from, to)`: attempts, retries, and the scan. `false` when the range was lost.
    async fn run_chunk(&self, range: &Range, lines: Vec<Line>, from: u64, to: u64) -> Result<bool> {
        let started = Instant::now();
        let mut records: Vec<(u64, String)> = Vec::with_capacity(lines.len());
        let mut skipped = Vec::new();
        for line in lines {
            match line.text {
                Ok(text) => match serde_json::from_str::<serde::de::IgnoredAny>(&text) {
                    Ok(_) => records.push((line.number, text)),
                    Err(e) => skipped.push(SkippedRecord {
                        record: line.number,
                        reason: format!("not JSON: {e}"),
                        text,
                    }),
                },
                Err(reason) => skipped.push(SkippedRecord {
                    record: line.number,
                    reason,
                    text: String::new(),
                }),
            }
        }
        let result = match self
            .attempt_with_retries(range, &records, skipped.clone(), from, to)
            .await?
        {
            Ok(committed) => Ok(committed),
            Err(ChunkFailure::Lost) => return Ok(false),
            Err(ChunkFailure::Transient(why)) => Err(why),
            Err(ChunkFailure::Fatal(why)) => {
                self.metrics
                    .chunk(&self.job.name, "failed", started.elapsed());
                anyhow::bail!(
                    "records {}..{}: the component stopped the job: {why}",
                    from + 1,
                    to
                )
            }
            Err(ChunkFailure::Failed(why)) => {
                tracing::warn!(
                    job = self.job.name,
                    range = range.n,
                    from,
                    to,
                    error = why,
                    "chunk failed; scanning it record by record"
                );
                self.metrics
                    .chunk(&self.job.name, "scanned", started.elapsed());
                return self.scan(range, records, skipped, from, to).await;
            }
        };
        match result {
            Ok((written, skips)) => {
                self.metrics.chunk(&self.job.name, "ok", started.elapsed());
                self.metrics.records(&self.job.name, written, skips);
                if skips > 0 {
                    self.check_skip_limit().await?;
                }
                Ok(true)
            }
            Err(why) => {
                self.metrics
                    .chunk(&self.job.name, "failed", started.elapsed());
                anyhow::bail!(
                    "records {}..{} failed {} times with transient errors: {why}",
                    from + 1,
                    to,
                    self.job.retry_limit + 1
                )
            }
        }
    }

    /// Runs the chunk; transient failures again, with backoff, up to the retry limit.
    async fn attempt_with_retries(
        &self,
        range: &Range,
        records: &[(u64, String)],
        skipped: Vec<SkippedRecord>,
        from: u64,
        to: u64,
    ) -> Result<Result<(u64, u64), ChunkFailure>> {
        let mut attempt = 0;
        loop {
            match self
                .attempt(range, records, skipped.clone(), from, to)
                .await
            {
                Err(ChunkFailure::Transient(why)) if attempt < self.job.retry_limit => {
                    attempt += 1;
                    let wait = Duration::from_millis(200 * 2u64.pow(attempt.min(6)));
                    tracing::warn!(
                        job = self.job.name,
                        range = range.n,
                        from,
                        attempt,
                        error = why,
                        "chunk failed transiently; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
                other => return Ok(other),
            }
        }
    }

    /// Spring Batch's scan: each record alone, each committed with its own checkpoint; a record
    /// that fails alone is skipped with its reason.
    async fn scan(
        &self,
        range: &Range,
        records: Vec<(u64, String)>,
        mut skipped: Vec<SkippedRecord>,
        from: u64,
        to: u64,
    ) -> Result<bool> {
        let mut position = from;
        let count = records.len();
        for (i, (number, text)) in records.into_iter().enumerate() {
            let until = if i + 1 == count { to } else { number + 1 };
            let before: Vec<SkippedRecord> = skipped
                .iter()
                .filter(|s| s.record < until)
                .cloned()
                .collect();
            skipped.retain(|s| s.record >= until);
            let one = [(number, text.clone())];
            let outcome = match self
                .attempt_with_retries(range, &one, before.clone(), position, until)
                .await?
            {
                Ok(done) => done,
                Err(ChunkFailure::Lost) => return Ok(false),
                Err(ChunkFailure::Transient(why)) => {
                    anyhow::bail!("record {} failed with transient errors: {why}", number + 1)
                }
                Err(ChunkFailure::Fatal(why)) => {
                    anyhow::bail!(
                        "record {}: the component stopped the job: {why}",
                        number + 1
                    )
                }
                Err(ChunkFailure::Failed(why)) => {
                    let mut with_this = before;
                    with_this.push(SkippedRecord {
                        record: number,
                        reason: why,
                        text,
                    });
                    match self
                        .attempt_with_retries(range, &[], with_this, position, until)
                        .await?
                    {
                        Ok(done) => done,
                        Err(ChunkFailure::Lost) => return Ok(false),
                        Err(
                            ChunkFailure::Transient(why)
                            | ChunkFailure::Failed(why)
                            | ChunkFailure::Fatal(why),
                        ) => {
                            anyhow::bail!("cannot record the skip of record {}: {why}", number + 1)
                        }
                    }
                }
            };
            self.metrics.records(&self.job.name, outcome.0, outcome.1);
            position = until;
        }
        if position < to || count == 0 {
            match self
                .attempt_with_retries(range, &[], skipped, position, to)
                .await?
            {
                Ok(done) => self.metrics.records(&self.job.name, done.0, done.1),
                Err(ChunkFailure::Lost) => return Ok(false),
                Err(
                    ChunkFailure::Transient(why)
                    | ChunkFailure::Failed(why)
                    | ChunkFailure::Fatal(why),
                ) => {
                    anyhow::bail!("cannot commit the checkpoint at record {to}: {why}")
                }
            }
        }
        self.check_skip_limit().await?;
        Ok(true)
    }

    async fn check_skip_limit(&self) -> Result<()> {
        let progress = self
            .repository
            .progress(&self.execution.id)
            .await
            .map_err(|e| anyhow::anyhow!("job repository: {e}"))?;
        if progress.skipped > self.job.skip_limit {
            anyhow::bail!(
                "{} records skipped, over the skip limit of {} (see `moa job status {} --skips`)",
                progress.skipped,
                self.job.skip_limit,
                self.job.name
            );
        }
        Ok(())
    }

    /// One attempt: a fresh instance, a transaction, the call, the checkpoint, the commit.
    /// Returns (written, skipped).
    async fn attempt(
        &self,
        range: &Range,
        records: &[(u64, String)],
        mut skipped: Vec<SkippedRecord>,
        from: u64,
        to: u64,
    ) -> Result<(u64, u64), ChunkFailure> {
        let store_failure = |e: DocumentError| match e {
            DocumentError::Unavailable(m) | DocumentError::WriteConflict(m) => {
                ChunkFailure::Transient(m)
            }
            other => ChunkFailure::Transient(other.to_string()),
        };
        let mut written = 0u64;
        let mut wake_outbox = false;
        // The component's transaction begins at its first read or write (see OpenTransaction::lend);
        // without records, or when it never touched it, the host begins one for the checkpoint.
        let mut tx: Option<Box<dyn DocumentTransaction>> = None;
        if !records.is_empty() {
            let id = format!("job-{}-{}-{from}", self.job.name, range.n);
            let timeout = self.component.request_timeout;
            let mut store = self
                .component
                .new_store(&self.engine, Invocation::new(id, timeout))
                .map_err(|e| {
                    ChunkFailure::Transient(format!("cannot create an instance: {e:#}"))
                })?;
            let instance = self.pre.instantiate_async(&mut store).await.map_err(|e| {
                ChunkFailure::Failed(format!("the component trapped at start: {e:#}"))
            })?;
            let own = store
                .data_mut()
                .table
                .push(OpenTransaction::lend(self.documents.clone()))
                .map_err(|e| ChunkFailure::Transient(e.to_string()))?;
            let borrowed = Resource::<OpenTransaction>::new_borrow(own.rep());
            let context = JobContext {
                job: self.job.name.clone(),
                execution_id: self.execution.id.clone(),
                parameters: self
                    .execution
                    .parameters
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                range: range.n,
                first_record: records[0].0,
            };
            let texts: Vec<String> = records.iter().map(|(_, t)| t.clone()).collect();
            let call = instance
                .moa_jobs_chunk_processor()
                .call_process_chunk(&mut store, &context, &texts, borrowed);
            let answer = tokio::time::timeout(timeout, call).await;
            let open = store
                .data_mut()
                .table
                .delete(own)
                .map_err(|e| ChunkFailure::Transient(e.to_string()))?;
            let (lent, wake) = open.finish();
            wake_outbox = wake.is_some();
            tx = match lent {
                Lent::Open(tx) => Some(tx),
                Lent::Unused => None,
                Lent::Ended => {
                    return Err(ChunkFailure::Failed(
                        "the component committed or aborted the job's transaction itself; leave that to the host".into(),
                    ));
                }
            };
            let failure = match answer {
                Err(_) => Some(ChunkFailure::Failed(format!(
                    "deadline of {} ms exceeded",
                    timeout.as_millis()
                ))),
                Ok(Err(trap)) => Some(ChunkFailure::Failed(format!(
                    "the component trapped: {trap:#}"
                ))),
                Ok(Ok(Err(ChunkError::Transient(m)))) => Some(ChunkFailure::Transient(m)),
                Ok(Ok(Err(ChunkError::Failed(m)))) => Some(ChunkFailure::Failed(m)),
                Ok(Ok(Err(ChunkError::Fatal(m)))) => Some(ChunkFailure::Fatal(m)),
                Ok(Ok(Ok(component_skips))) => {
                    let mut bad = Vec::new();
                    for skip in component_skips {
                        match records.get(skip.index as usize) {
                            Some((number, text)) if !bad.contains(number) => {
                                bad.push(*number);
                                skipped.push(SkippedRecord {
                                    record: *number,
                                    reason: skip.reason,
                                    text: text.clone(),
                                });
                            }
                            _ => {}
                        }
                    }
                    written = (records.len() - bad.len()) as u64;
                    None
                }
            };
            if let Some(failure) = failure {
                if let Some(tx) = tx {
                    let _ = tx.abort().await;
                }
                return Err(failure);
            }
        }
        let mut tx = match tx {
            Some(tx) => tx,
            None => self
                .documents
                .backend
                .begin()
                .await
                .map_err(store_failure)?,
        };
        let skip_count = skipped.len() as u64;
        let ours = super::repository::JobRepository::checkpoint(
            tx.as_mut(),
            &self.execution.id,
            range,
            &self.host,
            from,
            to,
            written,
            &skipped,
            self.job.lease,
        )
        .await;
        match ours {
            Ok(true) => {}
            Ok(false) => {
                let _ = tx.abort().await;
                return Err(ChunkFailure::Lost);
            }
            Err(e) => {
                let _ = tx.abort().await;
                return Err(store_failure(e));
            }
        }
        tx.commit().await.map_err(store_failure)?;
        if wake_outbox {
            self.documents.outbox.committed();
        }
        Ok((written, skip_count))
    }
}
